#include "lstmserve/server/oip/oip_json.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"

namespace lstmserve::server::oip {
namespace {

using json = nlohmann::json;

// The datatypes whose values JSON carries as numbers (the others the server never takes;
// OpenInference then names the type it wants).
bool Encodable(const std::string& datatype) { return datatype == "FP32" || datatype == "FP16" || datatype == "BF16"; }

// Appends `v` to `out` as the little-endian bytes of `datatype` (one that is Encodable).
void AppendAs(const std::string& datatype, double v, std::string* out) {
  auto put = [out](const auto& x) { out->append(reinterpret_cast<const char*>(&x), sizeof(x)); };
  const float f = static_cast<float>(v);
  if (datatype == "FP32") {
    put(f);
  } else if (datatype == "FP16") {
    put(c10::Half(f));
  } else {
    put(c10::BFloat16(f));
  }
}

// The bytes of `values` as `datatype`; nullopt for one that is not Encodable.
std::optional<std::string> Encode(const std::vector<double>& values, const std::string& datatype) {
  if (!Encodable(datatype)) return std::nullopt;
  std::string out;
  for (double v : values) AppendAs(datatype, v, &out);
  return out;
}

// The values of an output's bytes, for a JSON answer.
json Decode(const Tensor& t) {
  json values = json::array();
  const char* p = t.data.data();
  if (t.datatype == "FP32") {
    for (size_t i = 0; i + 4 <= t.data.size(); i += 4) {
      float v;
      std::memcpy(&v, p + i, 4);
      values.push_back(v);
    }
  } else {
    for (size_t i = 0; i + 2 <= t.data.size(); i += 2) {
      uint16_t bits;
      std::memcpy(&bits, p + i, 2);
      const float v = t.datatype == "FP16" ? static_cast<float>(c10::Half(bits, c10::Half::from_bits()))
                                           : static_cast<float>(c10::BFloat16(bits, c10::BFloat16::from_bits()));
      values.push_back(v);
    }
  }
  return values;
}

absl::Status SequenceFromJson(const json& params, InferRequest* out) {
  if (auto it = params.find("sequence_id"); it != params.end()) {
    if (it->is_number_unsigned()) {
      out->sequence_key = SequenceKey(it->get<uint64_t>());
    } else if (it->is_string()) {
      out->sequence_key = SequenceKey(it->get<std::string>());
    } else {
      return absl::InvalidArgumentError("parameters.sequence_id must be an unsigned integer or a string");
    }
  }
  for (const auto& [name, flag] : {std::pair<const char*, bool*>{"sequence_start", &out->sequence_start},
                                   std::pair<const char*, bool*>{"sequence_end", &out->sequence_end}}) {
    if (auto it = params.find(name); it != params.end()) {
      if (!it->is_boolean()) return absl::InvalidArgumentError(absl::StrCat("parameters.", name, " must be a boolean"));
      *flag = it->get<bool>();
    }
  }
  if (auto it = params.find("sequence_step"); it != params.end()) {
    if (!it->is_number_unsigned()) {
      return absl::InvalidArgumentError(
          "parameters.sequence_step must be an unsigned integer: the steps the sequence has taken before this "
          "request");
    }
    out->sequence_step = it->get<uint64_t>();
  }
  return absl::OkStatus();
}

// Limits of an infer request's JSON beyond its tensors' data.
constexpr int kMaxJsonDepth = 32;            // objects and lists nested, outside data
constexpr int kMaxDataDepth = 8;             // lists nested inside one input's data
constexpr int64_t kMaxJsonValues = 1 << 16;  // values outside data

// The numbers of one input's "data", kept as they are read: the little-endian bytes of the
// input's datatype when the input named it (FP32, FP16, BF16) before its data, else doubles
// (encoded once the datatype is known). At most 8 bytes per number, and a number takes at
// least 2 bytes of JSON ("0,"): memory is bounded by 4x the body.
struct DataValues {
  std::string datatype;  // what `bytes` holds; empty: `doubles`
  std::string bytes;
  std::vector<double> doubles;
  int leaf_depth = 0;  // the depth of its numbers (1: a flat list)
};

// Builds the request's DOM with nlohmann's SAX interface, in bounded memory: the data of
// each input goes straight into a DataValues (the DOM holds a binary value, which JSON text
// cannot produce, naming it); everything else is limited in depth and in count.
class InferSax {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  json root;
  std::vector<DataValues> data;
  absl::Status status = absl::OkStatus();

  bool null() { return Value(nullptr); }
  bool boolean(bool v) { return Value(v); }
  bool number_integer(number_integer_t v) { return in_data_ ? Number(static_cast<double>(v)) : Value(v); }
  bool number_unsigned(number_unsigned_t v) { return in_data_ ? Number(static_cast<double>(v)) : Value(v); }
  bool number_float(number_float_t v, const string_t&) { return in_data_ ? Number(v) : Value(v); }
  bool string(string_t& v) { return Value(std::move(v)); }
  bool binary(binary_t&) { return Fail("the request is not valid JSON: binary values"); }
  bool start_object(std::size_t) {
    if (in_data_) return DataError("must hold numbers (a flat or nested list)");
    return Open(json::object());
  }
  bool key(string_t& k) {
    key_ = std::move(k);
    return true;
  }
  bool end_object() { return Close(); }
  bool start_array(std::size_t) {
    if (in_data_) {
      if (++data_depth_ > kMaxDataDepth)
        return DataError(absl::StrCat("is nested over ", kMaxDataDepth, " lists deep"));
      return true;
    }
    // An input's data: ["inputs"][i]["data"].
    if (stack_.size() == 3 && key_ == "data" && stack_[1].kind == Kind::kInputs && stack_[2].node->is_object()) {
      in_data_ = true;
      data_depth_ = 1;
      DataValues values;
      if (auto it = stack_[2].node->find("datatype"); it != stack_[2].node->end() && it->is_string()) {
        const std::string& type = it->get_ref<const std::string&>();
        if (Encodable(type)) values.datatype = type;
      }
      if (auto it = stack_[2].node->find("name"); it != stack_[2].node->end() && it->is_string()) {
        data_name_ = it->get<std::string>();
      } else {
        data_name_ = "";
      }
      data.push_back(std::move(values));
      return true;
    }
    return Open(json::array());
  }
  bool end_array() {
    if (in_data_) {
      if (--data_depth_ == 0) {
        in_data_ = false;
        return Value(json::binary(json::binary_t::container_type(), static_cast<std::uint64_t>(data.size() - 1)));
      }
      return true;
    }
    return Close();
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ...": without the tag.
    absl::string_view what = e.what();
    if (const size_t tag = what.find("] "); tag != absl::string_view::npos) what.remove_prefix(tag + 2);
    status = absl::InvalidArgumentError(absl::StrCat("the request is not valid JSON: ", core::ClientText(what)));
    return false;
  }

 private:
  enum class Kind { kOther, kInputs };
  struct Frame {
    json* node;
    Kind kind;
  };

  bool Fail(std::string message) {
    status = absl::InvalidArgumentError(std::move(message));
    return false;
  }
  bool DataError(absl::string_view what) {
    return Fail(absl::StrCat("input ", core::ClientText(data_name_), ".data ", what));
  }
  bool Number(double v) {
    DataValues& d = data.back();
    if (d.leaf_depth == 0) d.leaf_depth = data_depth_;
    if (d.leaf_depth != data_depth_) return DataError("mixes numbers and lists at one depth");
    if (d.datatype.empty()) {
      d.doubles.push_back(v);
    } else {
      AppendAs(d.datatype, v, &d.bytes);
    }
    return true;
  }
  // Places a value where the parser is: the root, the next element of a list, or the
  // value of the last key.
  json* Place(json&& v) {
    if (++values_ > kMaxJsonValues) {
      Fail(absl::StrCat("the request has over ", kMaxJsonValues, " JSON values outside the inputs' data"));
      return nullptr;
    }
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    json& parent = *stack_.back().node;
    if (parent.is_array()) {
      parent.push_back(std::move(v));
      return &parent.back();
    }
    json& slot = parent[key_];
    slot = std::move(v);
    return &slot;
  }
  bool Value(json&& v) {
    if (in_data_) return DataError("must hold numbers (a flat or nested list)");
    return Place(std::move(v)) != nullptr;
  }
  bool Open(json&& container) {
    if (stack_.size() >= static_cast<size_t>(kMaxJsonDepth)) {
      return Fail(absl::StrCat("the request's JSON is nested over ", kMaxJsonDepth, " deep"));
    }
    const bool inputs = stack_.size() == 1 && key_ == "inputs" && container.is_array() && stack_[0].node->is_object();
    json* placed = Place(std::move(container));
    if (placed == nullptr) return false;
    stack_.push_back({placed, inputs ? Kind::kInputs : Kind::kOther});
    return true;
  }
  bool Close() {
    stack_.pop_back();
    return true;
  }

  std::vector<Frame> stack_;
  std::string key_;
  bool in_data_ = false;
  int data_depth_ = 0;
  std::string data_name_;
  int64_t values_ = 0;
};

}  // namespace

absl::StatusOr<HttpInferRequest> ParseHttpInfer(absl::string_view body, const std::string* header_length) {
  absl::string_view header = body;
  absl::string_view binary;
  if (header_length != nullptr) {
    size_t length = 0;
    if (!absl::SimpleAtoi(*header_length, &length) || length > body.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(kHeaderLength, " must be the JSON's length in bytes, at most the body's ", body.size()));
    }
    header = body.substr(0, length);
    binary = body.substr(length);
  }
  InferSax sax;
  try {
    if (!json::sax_parse(header.begin(), header.end(), &sax)) return sax.status;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("the request is not valid JSON: ", core::ClientText(e.what())));
  }
  const json& doc = sax.root;
  if (!doc.is_object()) {
    return absl::InvalidArgumentError(
        "the request is not a JSON object (the Open Inference Protocol's inference request)");
  }
  HttpInferRequest parsed;
  InferRequest& r = parsed.request;
  if (auto it = doc.find("id"); it != doc.end()) {
    if (!it->is_string()) return absl::InvalidArgumentError("id must be a string");
    r.id = it->get<std::string>();
  }
  if (auto it = doc.find("parameters"); it != doc.end()) {
    if (!it->is_object()) return absl::InvalidArgumentError("parameters must be an object");
    LSTMSERVE_RETURN_IF_ERROR(SequenceFromJson(*it, &r));
    if (auto b = it->find("binary_data_output"); b != it->end()) {
      if (!b->is_boolean()) return absl::InvalidArgumentError("parameters.binary_data_output must be true or false");
      parsed.all_binary = b->get<bool>();
    }
    if (auto t = it->find("timeout"); t != it->end()) {
      if (!t->is_number_unsigned()) {
        return absl::InvalidArgumentError("parameters.timeout must be a whole number of microseconds");
      }
      parsed.timeout = absl::Microseconds(std::min<uint64_t>(t->get<uint64_t>(), uint64_t{1} << 62));
    }
  }
  const auto inputs = doc.find("inputs");
  if (inputs == doc.end() || !inputs->is_array()) return absl::InvalidArgumentError("inputs must be a list of tensors");
  size_t offset = 0;
  for (const json& in : *inputs) {
    if (!in.is_object() || !in.contains("name") || !in["name"].is_string() || !in.contains("datatype") ||
        !in["datatype"].is_string() || !in.contains("shape") || !in["shape"].is_array()) {
      return absl::InvalidArgumentError("each input needs name (string), datatype (string) and shape (list)");
    }
    Tensor t;
    t.name = in["name"].get<std::string>();
    t.datatype = in["datatype"].get<std::string>();
    for (const json& d : in["shape"]) {
      if (!d.is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat("input ", core::ClientText(t.name), ".shape must hold integers"));
      }
      t.shape.push_back(d.get<int64_t>());
    }
    const json* size = nullptr;
    if (auto p = in.find("parameters"); p != in.end() && p->is_object()) {
      if (auto s = p->find("binary_data_size"); s != p->end()) size = &*s;
    }
    if (size != nullptr && in.contains("data")) {
      return absl::InvalidArgumentError(
          absl::StrCat("input ", core::ClientText(t.name), " has both data and parameters.binary_data_size: give one"));
    }
    if (size != nullptr) {
      if (!size->is_number_unsigned() || size->get<uint64_t>() > binary.size() - offset) {
        return absl::InvalidArgumentError(
            absl::StrCat("input ", core::ClientText(t.name), ": binary_data_size must be a byte count within the ",
                         binary.size() - offset, " bytes of binary data left after the JSON (", kHeaderLength, ")"));
      }
      t.data = std::string(binary.substr(offset, size->get<uint64_t>()));
      offset += size->get<uint64_t>();
    } else {
      const auto data = in.find("data");
      if (data == in.end()) {
        return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name),
                                                       " has no data: give data, or parameters.binary_data_size"));
      }
      // A list was read as it came (InferSax): bytes of the datatype the input named, or
      // doubles; anything else in the DOM is not a list.
      if (!data->is_binary()) {
        return absl::InvalidArgumentError(
            absl::StrCat("input ", core::ClientText(t.name), ".data must hold numbers (a flat or nested list)"));
      }
      DataValues& values = sax.data[data->get_binary().subtype()];
      const int leaf_depth = values.leaf_depth == 0 ? 1 : values.leaf_depth;
      std::optional<std::string> bytes;
      if (values.datatype.empty()) {
        bytes = Encode(values.doubles, t.datatype);
      } else if (values.datatype == t.datatype) {
        bytes = std::move(values.bytes);
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("input ", core::ClientText(t.name), " names two datatypes: give datatype once"));
      }
      // A flat list, or lists nested as deep as the shape has dimensions.
      if (leaf_depth > 1 && static_cast<size_t>(leaf_depth) != t.shape.size()) {
        return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name), ".data is nested ",
                                                       leaf_depth, " lists deep but its shape has ", t.shape.size(),
                                                       " dimensions: nest it as the shape, or give a flat list"));
      }
      t.data = std::move(bytes).value_or(std::string());
    }
    r.inputs.push_back(std::move(t));
  }
  if (offset != binary.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(binary.size() - offset, " bytes of binary data after the JSON belong to no input"));
  }
  if (auto outputs = doc.find("outputs"); outputs != doc.end()) {
    if (!outputs->is_array()) return absl::InvalidArgumentError("outputs must be a list");
    for (const json& o : *outputs) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) {
        return absl::InvalidArgumentError("each output needs a name (string)");
      }
      r.outputs.push_back(o["name"].get<std::string>());
      if (auto p = o.find("parameters"); p != o.end() && p->is_object()) {
        if (auto b = p->find("binary_data"); b != p->end() && b->is_boolean() && b->get<bool>()) {
          parsed.binary.push_back(r.outputs.back());
        }
      }
    }
  }
  return parsed;
}

HttpBody EncodeHttpInfer(const InferResponse& r, const HttpInferRequest& parsed) {
  json body = {{"model_name", r.model}, {"model_version", r.version}, {"outputs", json::array()}};
  if (!r.id.empty()) body["id"] = r.id;
  if (r.sequence_step.has_value()) body["parameters"] = {{"sequence_step", *r.sequence_step}};
  std::string tail;
  for (const Tensor& t : r.outputs) {
    json out = {{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}};
    const bool binary =
        parsed.all_binary || std::find(parsed.binary.begin(), parsed.binary.end(), t.name) != parsed.binary.end();
    if (binary) {
      out["parameters"] = {{"binary_data_size", t.data.size()}};
      tail += t.data;
    } else {
      out["data"] = Decode(t);
    }
    body["outputs"].push_back(std::move(out));
  }
  HttpBody out;
  out.body = body.dump(-1, ' ', false, json::error_handler_t::replace);  // never throws on bad UTF-8
  if (tail.empty()) {
    out.content_type = "application/json";
  } else {
    out.header_length = std::to_string(out.body.size());
    out.body += tail;
    out.content_type = "application/octet-stream";
  }
  return out;
}

nlohmann::json MetadataJson(const ModelMetadata& m) {
  json out = {{"name", m.name}, {"versions", m.versions}, {"platform", m.platform}};
  for (const auto* part : {&m.inputs, &m.outputs}) {
    json list = json::array();
    for (const auto& t : *part) list.push_back({{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}});
    out[part == &m.inputs ? "inputs" : "outputs"] = std::move(list);
  }
  return out;
}

nlohmann::json ConfigJson(const ModelMetadata& m) {
  auto tensors = [](const std::vector<TensorMetadata>& list, bool inputs) {
    json out = json::array();
    for (const auto& t : list) {
      json e = {{"name", t.name}, {"data_type", "TYPE_" + t.datatype}, {"dims", t.shape}};
      if (inputs) e["optional"] = t.optional;
      out.push_back(std::move(e));
    }
    return out;
  };
  return {
      {"name", m.name},
      {"platform", m.platform},
      {"backend", m.backend},
      {"max_batch_size", m.max_batch_size},
      {"input", tensors(m.inputs, true)},
      {"output", tensors(m.outputs, false)},
      {"sequence_batching", {{"max_sequence_idle_microseconds", absl::ToInt64Microseconds(m.sequence_idle_timeout)}}}};
}

namespace {

json DurationJson(const StatDuration& d) { return {{"count", d.count}, {"ns", d.ns}}; }

// A repository call's body as a JSON object; an empty body is an empty object.
absl::StatusOr<json> RepositoryBody(absl::string_view body, absl::string_view call) {
  if (body.find_first_not_of(" \t\r\n") == absl::string_view::npos) return json::object();
  json parsed = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || !parsed.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("the body of ", call, " must be empty or a JSON object"));
  }
  return parsed;
}

}  // namespace

nlohmann::json StatisticsJson(const std::vector<ModelStats>& models) {
  json list = json::array();
  for (const ModelStats& m : models) {
    json batches = json::array();
    for (const BatchSizeStats& b : m.batch_stats) {
      batches.push_back({{"batch_size", b.batch_size},
                         {"compute_input", DurationJson(b.compute_input)},
                         {"compute_infer", DurationJson(b.compute_infer)},
                         {"compute_output", DurationJson(b.compute_output)}});
    }
    list.push_back({{"name", m.name},
                    {"version", "1"},
                    {"last_inference", m.last_inference_ms},
                    {"inference_count", m.inference_count},
                    {"execution_count", m.execution_count},
                    {"inference_stats",
                     {{"success", DurationJson(m.success)},
                      {"fail", DurationJson(m.fail)},
                      {"queue", DurationJson(m.queue)},
                      {"compute_input", DurationJson(m.compute_input)},
                      {"compute_infer", DurationJson(m.compute_infer)},
                      {"compute_output", DurationJson(m.compute_output)},
                      {"cache_hit", DurationJson({})},
                      {"cache_miss", DurationJson({})}}},
                    {"batch_stats", std::move(batches)}});
  }
  return {{"model_stats", std::move(list)}};
}

nlohmann::json RepositoryIndexJson(const std::vector<RepositoryModel>& models) {
  json list = json::array();
  for (const RepositoryModel& m : models) {
    list.push_back({{"name", m.name}, {"version", m.version}, {"state", m.state}, {"reason", m.reason}});
  }
  return list;
}

absl::StatusOr<bool> ParseRepositoryIndex(absl::string_view body) {
  LSTMSERVE_ASSIGN_OR_RETURN(json parsed, RepositoryBody(body, "the repository index"));
  bool ready = false;
  for (const auto& [key, value] : parsed.items()) {
    if (key != "ready") {
      return absl::InvalidArgumentError(
          absl::StrCat("the repository index takes only \"ready\" (got \"", core::ClientText(key), "\")"));
    }
    if (!value.is_boolean()) return absl::InvalidArgumentError("\"ready\" must be a boolean");
    ready = value.get<bool>();
  }
  return ready;
}

absl::StatusOr<std::vector<std::string>> ParseRepositoryParameters(absl::string_view body) {
  LSTMSERVE_ASSIGN_OR_RETURN(json parsed, RepositoryBody(body, "a load or unload"));
  std::vector<std::string> names;
  for (const auto& [key, value] : parsed.items()) {
    if (key != "parameters" || !value.is_object()) {
      return absl::InvalidArgumentError("the body of a load or unload holds only \"parameters\", an object");
    }
    for (const auto& parameter : value.items()) names.push_back(parameter.key());
  }
  return names;
}

}  // namespace lstmserve::server::oip
