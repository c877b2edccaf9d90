#include "oip_json.h"

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

// The values of a JSON "data" (flat, or nested row-major lists) in `out`; `*leaf_depth`
// the depth of its numbers (1: a flat list).
absl::Status Flatten(const json& data, int depth, std::vector<double>* out, const std::string& name,
                     int* leaf_depth) {
  if (data.is_number()) {
    if (*leaf_depth == 0) *leaf_depth = depth;
    if (depth != *leaf_depth) {
      return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(name),
                                                     ".data mixes numbers and lists at one depth"));
    }
    out->push_back(data.get<double>());
    return absl::OkStatus();
  }
  if (!data.is_array() || depth > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("input ", core::ClientText(name), ".data must hold numbers (a flat or nested list)"));
  }
  for (const json& item : data) LSTMSERVE_RETURN_IF_ERROR(Flatten(item, depth + 1, out, name, leaf_depth));
  return absl::OkStatus();
}

// The little-endian bytes of `values` as `datatype`; nullopt for a type the server never
// takes (OpenInference then names the type it wants).
std::optional<std::string> Encode(const std::vector<double>& values, const std::string& datatype) {
  std::string out;
  auto put = [&out](const auto& v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  if (datatype == "FP32") {
    for (double v : values) put(static_cast<float>(v));
  } else if (datatype == "FP16") {
    for (double v : values) put(c10::Half(static_cast<float>(v)));
  } else if (datatype == "BF16") {
    for (double v : values) put(c10::BFloat16(static_cast<float>(v)));
  } else {
    return std::nullopt;
  }
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
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HttpInferRequest> ParseHttpInfer(absl::string_view body, const std::string* header_length) {
  absl::string_view header = body;
  absl::string_view binary;
  if (header_length != nullptr) {
    size_t length = 0;
    if (!absl::SimpleAtoi(*header_length, &length) || length > body.size()) {
      return absl::InvalidArgumentError(absl::StrCat(kHeaderLength, " must be the JSON's length in bytes, at most the body's ",
                                                     body.size()));
    }
    header = body.substr(0, length);
    binary = body.substr(length);
  }
  json doc;
  try {
    doc = json::parse(header.begin(), header.end());
  } catch (const json::exception& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ...": without the tag.
    absl::string_view what = e.what();
    if (const size_t tag = what.find("] "); tag != absl::string_view::npos) what.remove_prefix(tag + 2);
    return absl::InvalidArgumentError(absl::StrCat("the request is not valid JSON: ", core::ClientText(what)));
  }
  if (!doc.is_object()) {
    return absl::InvalidArgumentError("the request is not a JSON object (the Open Inference Protocol's inference request)");
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
        return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name), ".shape must hold integers"));
      }
      t.shape.push_back(d.get<int64_t>());
    }
    const json* size = nullptr;
    if (auto p = in.find("parameters"); p != in.end() && p->is_object()) {
      if (auto s = p->find("binary_data_size"); s != p->end()) size = &*s;
    }
    if (size != nullptr && in.contains("data")) {
      return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name),
                                                     " has both data and parameters.binary_data_size: give one"));
    }
    if (size != nullptr) {
      if (!size->is_number_unsigned() || size->get<uint64_t>() > binary.size() - offset) {
        return absl::InvalidArgumentError(absl::StrCat(
            "input ", core::ClientText(t.name), ": binary_data_size must be a byte count within the ",
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
      std::vector<double> values;
      int leaf_depth = 0;
      LSTMSERVE_RETURN_IF_ERROR(Flatten(*data, 0, &values, t.name, &leaf_depth));
      // A flat list, or lists nested as deep as the shape has dimensions.
      if (leaf_depth > 1 && static_cast<size_t>(leaf_depth) != t.shape.size()) {
        return absl::InvalidArgumentError(absl::StrCat("input ", core::ClientText(t.name), ".data is nested ",
                                                       leaf_depth, " lists deep but its shape has ", t.shape.size(),
                                                       " dimensions: nest it as the shape, or give a flat list"));
      }
      t.data = Encode(values, t.datatype).value_or(std::string());
    }
    r.inputs.push_back(std::move(t));
  }
  if (offset != binary.size()) {
    return absl::InvalidArgumentError(absl::StrCat(binary.size() - offset,
                                                   " bytes of binary data after the JSON belong to no input"));
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
  return {{"name", m.name},
          {"platform", m.platform},
          {"backend", "lstmserve"},
          {"max_batch_size", 0},
          {"input", tensors(m.inputs, true)},
          {"output", tensors(m.outputs, false)},
          {"sequence_batching",
           {{"max_sequence_idle_microseconds", absl::ToInt64Microseconds(m.sequence_idle_timeout)}}}};
}

}  // namespace lstmserve::server::oip
