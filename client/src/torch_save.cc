#include "torch_save.h"

#include <cstdint>
#include <cstring>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>

#include "absl/strings/str_cat.h"

#include "lstmserve/core/status.h"

namespace lstmserve::client {
namespace {

// Pickle opcodes (protocol 2) this writer uses.
constexpr char kProto = '\x80';
constexpr char kGlobal = 'c';
constexpr char kMark = '(';
constexpr char kTuple = 't';
constexpr char kEmptyTuple = ')';
constexpr char kEmptyDict = '}';
constexpr char kReduce = 'R';
constexpr char kBinUnicode = 'X';
constexpr char kBinInt = 'J';
constexpr char kLong1 = '\x8a';
constexpr char kNewFalse = '\x89';
constexpr char kBinPersId = 'Q';
constexpr char kSetItems = 'u';
constexpr char kStop = '.';

class Pickle {
 public:
  void Op(char op) { out_.push_back(op); }
  void Global(const char* module, const char* name) {
    Op(kGlobal);
    absl::StrAppend(&out_, module, "\n", name, "\n");
  }
  void Text(const std::string& s) {
    Op(kBinUnicode);
    U32(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void Int(int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
      Op(kBinInt);
      U32(static_cast<uint32_t>(static_cast<int32_t>(v)));
      return;
    }
    Op(kLong1);  // 8 bytes, little-endian two's complement
    out_.push_back('\x08');
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff));
  }
  void IntTuple(at::IntArrayRef values) {
    Op(kMark);
    for (int64_t v : values) Int(v);
    Op(kTuple);
  }
  // An empty OrderedDict, as collections.OrderedDict().
  void EmptyOrderedDict() {
    Global("collections", "OrderedDict");
    Op(kEmptyTuple);
    Op(kReduce);
  }
  std::string Take() { return std::move(out_); }

 private:
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

// torch.<Name>Storage for a dtype, as torch.save names it.
const char* StorageClass(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "FloatStorage";
    case at::kDouble: return "DoubleStorage";
    case at::kHalf: return "HalfStorage";
    case at::kBFloat16: return "BFloat16Storage";
    case at::kChar: return "CharStorage";
    case at::kByte: return "ByteStorage";
    case at::kShort: return "ShortStorage";
    case at::kInt: return "IntStorage";
    case at::kLong: return "LongStorage";
    case at::kBool: return "BoolStorage";
    default: return nullptr;
  }
}

}  // namespace

absl::StatusOr<std::string> TorchSaveStateDict(const std::vector<core::NamedTensor>& tensors) {
  return core::GuardTorch("the .pt file", [&]() -> absl::StatusOr<std::string> {
    Pickle p;
    std::vector<at::Tensor> storages;
    p.Op(kProto);
    p.Op('\x02');
    p.Op(kEmptyDict);  // a plain dict, as torch.save({...}) writes it
    p.Op(kMark);
    for (const auto& named : tensors) {
      const at::Tensor t = named.value.cpu().contiguous();
      const char* storage = StorageClass(t.scalar_type());
      if (storage == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", named.name, "' has dtype ",
                                                       c10::toString(t.scalar_type()),
                                                       ", which a .pt file cannot hold; export it as .safetensors"));
      }
      p.Text(named.name);
      p.Global("torch._utils", "_rebuild_tensor_v2");
      p.Op(kMark);
      // The storage: a persistent id ('storage', class, key, location, size).
      p.Op(kMark);
      p.Text("storage");
      p.Global("torch", storage);
      p.Text(absl::StrCat(storages.size()));
      p.Text("cpu");
      p.Int(t.numel());
      p.Op(kTuple);
      p.Op(kBinPersId);
      p.Int(0);  // storage offset
      p.IntTuple(t.sizes());
      p.IntTuple(t.strides());
      p.Op(kNewFalse);       // requires_grad
      p.EmptyOrderedDict();  // backward hooks
      p.Op(kTuple);
      p.Op(kReduce);
      storages.push_back(t);
    }
    p.Op(kSetItems);
    p.Op(kStop);
    const std::string pickle = p.Take();

    std::string out;
    caffe2::serialize::PyTorchStreamWriter writer([&out](const void* data, size_t size) {
      out.append(static_cast<const char*>(data), size);
      return size;
    });
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    static constexpr char kLittle[] = "little";
    writer.writeRecord("byteorder", kLittle, sizeof(kLittle) - 1);
    for (size_t i = 0; i < storages.size(); ++i) {
      writer.writeRecord(absl::StrCat("data/", i), storages[i].data_ptr(), storages[i].nbytes());
    }
    writer.writeEndOfFile();
    return out;
  });
}

}  // namespace lstmserve::client
