#include "lstmserve/wire/conversions.h"

#include <cmath>
#include <cstring>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

#include "lstmserve/core/status.h"
#include "lstmserve/core/tensor_bytes.h"

namespace lstmserve::wire {
namespace {

namespace v1 = ::lstmserve::v1;

absl::StatusOr<core::FanMode> FanModeFromProto(v1::FanMode mode, absl::string_view field) {
  switch (mode) {
    case v1::FAN_MODE_UNSPECIFIED:
    case v1::FAN_MODE_FAN_IN: return core::FanMode::kFanIn;
    case v1::FAN_MODE_FAN_OUT: return core::FanMode::kFanOut;
    default: return absl::InvalidArgumentError(absl::StrCat(field, ".mode: unknown value ", mode));
  }
}

absl::StatusOr<core::Nonlinearity> NonlinearityFromProto(v1::Nonlinearity n, absl::string_view field) {
  switch (n) {
    case v1::NONLINEARITY_UNSPECIFIED:
    case v1::NONLINEARITY_LEAKY_RELU: return core::Nonlinearity::kLeakyRelu;
    case v1::NONLINEARITY_LINEAR: return core::Nonlinearity::kLinear;
    case v1::NONLINEARITY_CONV1D: return core::Nonlinearity::kConv1d;
    case v1::NONLINEARITY_CONV2D: return core::Nonlinearity::kConv2d;
    case v1::NONLINEARITY_CONV3D: return core::Nonlinearity::kConv3d;
    case v1::NONLINEARITY_CONV_TRANSPOSE1D: return core::Nonlinearity::kConvTranspose1d;
    case v1::NONLINEARITY_CONV_TRANSPOSE2D: return core::Nonlinearity::kConvTranspose2d;
    case v1::NONLINEARITY_CONV_TRANSPOSE3D: return core::Nonlinearity::kConvTranspose3d;
    case v1::NONLINEARITY_SIGMOID: return core::Nonlinearity::kSigmoid;
    case v1::NONLINEARITY_TANH: return core::Nonlinearity::kTanh;
    case v1::NONLINEARITY_RELU: return core::Nonlinearity::kRelu;
    case v1::NONLINEARITY_SELU: return core::Nonlinearity::kSelu;
    default: return absl::InvalidArgumentError(absl::StrCat(field, ".nonlinearity: unknown value ", n));
  }
}

// `present`: the field was sent. Absent gives `fallback`; present, it must name one kind.
absl::StatusOr<core::Initializer> InitializerFromProto(bool present, const v1::Initializer& init,
                                                       const core::Initializer& fallback, absl::string_view field) {
  using I = core::Initializer;
  switch (init.kind_case()) {
    case v1::Initializer::KIND_NOT_SET:
      if (!present) return fallback;
      return absl::InvalidArgumentError(absl::StrCat(
          field, " is set but names no initializer; set exactly one kind (e.g. kaiming_normal {}), or leave ", field,
          " out for the default, ", core::DescribeInitializer(fallback)));
    case v1::Initializer::kUniform: {
      const auto& u = init.uniform();
      return I::Uniform(u.has_a() ? u.a() : 0.0, u.has_b() ? u.b() : 1.0);
    }
    case v1::Initializer::kNormal: {
      const auto& n = init.normal();
      return I::Normal(n.has_mean() ? n.mean() : 0.0, n.has_std() ? n.std() : 1.0);
    }
    case v1::Initializer::kConstant: return I::Constant(init.constant().value());
    case v1::Initializer::kZeros: return I::Zeros();
    case v1::Initializer::kOnes: return I::Ones();
    case v1::Initializer::kXavierUniform:
      return I::XavierUniform(init.xavier_uniform().has_gain() ? init.xavier_uniform().gain() : 1.0);
    case v1::Initializer::kXavierNormal:
      return I::XavierNormal(init.xavier_normal().has_gain() ? init.xavier_normal().gain() : 1.0);
    case v1::Initializer::kKaimingUniform:
    case v1::Initializer::kKaimingNormal: {
      const bool uniform = init.kind_case() == v1::Initializer::kKaimingUniform;
      const auto& k = uniform ? init.kaiming_uniform() : init.kaiming_normal();
      LSTMSERVE_ASSIGN_OR_RETURN(core::FanMode mode, FanModeFromProto(k.mode(), field));
      LSTMSERVE_ASSIGN_OR_RETURN(core::Nonlinearity n, NonlinearityFromProto(k.nonlinearity(), field));
      const double a = k.has_a() ? k.a() : 0.0;
      return uniform ? I::KaimingUniform(a, mode, n) : I::KaimingNormal(a, mode, n);
    }
    case v1::Initializer::kOrthogonal:
      return I::Orthogonal(init.orthogonal().has_gain() ? init.orthogonal().gain() : 1.0);
    case v1::Initializer::kTruncNormal: {
      const auto& t = init.trunc_normal();
      return I::TruncNormal(t.has_mean() ? t.mean() : 0.0, t.has_std() ? t.std() : 1.0, t.has_a() ? t.a() : -2.0,
                            t.has_b() ? t.b() : 2.0);
    }
    case v1::Initializer::kEye: return I::Eye();
    case v1::Initializer::kDirac: return I::Dirac(init.dirac().has_groups() ? init.dirac().groups() : 1);
    case v1::Initializer::kSparse:
      return I::Sparse(init.sparse().sparsity(), init.sparse().has_std() ? init.sparse().std() : 0.01);
  }
  return absl::InvalidArgumentError(absl::StrCat(field, ": unknown initializer"));
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

absl::StatusOr<core::DType> DTypeFromProto(v1::DataType dtype, absl::string_view field) {
  switch (dtype) {
    case v1::DATA_TYPE_FLOAT32: return core::DType::kFloat32;
    case v1::DATA_TYPE_FLOAT16: return core::DType::kFloat16;
    case v1::DATA_TYPE_BFLOAT16: return core::DType::kBFloat16;
    case v1::DATA_TYPE_INT8: return core::DType::kInt8;
    case v1::DATA_TYPE_UNSPECIFIED:
      return absl::InvalidArgumentError(
          absl::StrCat(field,
                       ".dtype is not set; expected DATA_TYPE_FLOAT32, "
                       "DATA_TYPE_FLOAT16 or DATA_TYPE_BFLOAT16 (DATA_TYPE_INT8 for int8 weights)"));
    default: return absl::InvalidArgumentError(absl::StrCat(field, ".dtype: unknown value ", dtype));
  }
}

v1::DataType DTypeToProto(core::DType dtype) {
  switch (dtype) {
    case core::DType::kFloat32: return v1::DATA_TYPE_FLOAT32;
    case core::DType::kFloat16: return v1::DATA_TYPE_FLOAT16;
    case core::DType::kBFloat16: return v1::DATA_TYPE_BFLOAT16;
    case core::DType::kInt8: return v1::DATA_TYPE_INT8;
  }
  return v1::DATA_TYPE_UNSPECIFIED;
}

absl::StatusOr<core::WeightStorage> WeightStorageFromProto(v1::WeightStorage storage, absl::string_view field) {
  switch (storage) {
    case v1::WEIGHT_STORAGE_UNSPECIFIED: return core::WeightStorage::kDType;
    case v1::WEIGHT_STORAGE_BFLOAT16: return core::WeightStorage::kBFloat16;
    case v1::WEIGHT_STORAGE_INT8: return core::WeightStorage::kInt8;
    default:
      return absl::InvalidArgumentError(absl::StrCat(field, ".weight_storage: unknown value ", storage,
                                                     "; expected WEIGHT_STORAGE_UNSPECIFIED, _BFLOAT16 or _INT8"));
  }
}

v1::WeightStorage WeightStorageToProto(core::WeightStorage storage) {
  switch (storage) {
    case core::WeightStorage::kDType: return v1::WEIGHT_STORAGE_UNSPECIFIED;
    case core::WeightStorage::kBFloat16: return v1::WEIGHT_STORAGE_BFLOAT16;
    case core::WeightStorage::kInt8: return v1::WEIGHT_STORAGE_INT8;
  }
  return v1::WEIGHT_STORAGE_UNSPECIFIED;
}

absl::StatusOr<at::Tensor> TensorFromProto(const v1::Tensor& tensor, absl::string_view field, core::DType expected,
                                           int64_t max_elements, const c10::Device& device) {
  LSTMSERVE_ASSIGN_OR_RETURN(core::DType dtype, DTypeFromProto(tensor.dtype(), field));
  if (dtype != expected) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".dtype is ", core::DTypeName(dtype),
                                                   "; the parameter set is ", core::DTypeName(expected)));
  }
  LSTMSERVE_ASSIGN_OR_RETURN(at::Tensor out,
                             core::TensorFromBytes(dtype, tensor.shape(), tensor.data(), field, max_elements));
  if (device.is_cpu()) return out;
  return core::GuardTorch(field, [&]() -> absl::StatusOr<at::Tensor> { return out.to(device); });
}

void TensorToProto(const at::Tensor& tensor, v1::Tensor* out) {
  const at::Tensor cpu = tensor.contiguous().cpu();
  out->set_dtype(DTypeToProto(core::FromScalarType(cpu.scalar_type()).value_or(core::DType::kFloat32)));
  out->mutable_shape()->Assign(cpu.sizes().begin(), cpu.sizes().end());
  out->set_data(static_cast<const char*>(cpu.data_ptr()), cpu.nbytes());
}

absl::StatusOr<core::ParameterSetSpec> SpecFromProto(const v1::ParameterSetSpec& spec) {
  core::ParameterSetSpec out;
  out.seed = spec.seed();
  switch (spec.fan_convention()) {
    case v1::FAN_CONVENTION_UNSPECIFIED:
    case v1::FAN_CONVENTION_TORCH: out.fan_convention = core::FanConvention::kTorch; break;
    case v1::FAN_CONVENTION_MATMUL: out.fan_convention = core::FanConvention::kMatmul; break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("spec.fan_convention: unknown value ", spec.fan_convention()));
  }
  if (spec.dtype() == v1::DATA_TYPE_UNSPECIFIED) {
    out.dtype = core::DType::kFloat32;
  } else {
    LSTMSERVE_ASSIGN_OR_RETURN(out.dtype, DTypeFromProto(spec.dtype(), "spec"));
  }
  LSTMSERVE_ASSIGN_OR_RETURN(out.weight_storage, WeightStorageFromProto(spec.weight_storage(), "spec"));
  switch (spec.layout_case()) {
    case v1::ParameterSetSpec::kLstm: {
      const auto& l = spec.lstm();
      core::LstmTemplate t;
      t.num_layers = l.num_layers();
      t.input_size = l.input_size();
      t.hidden_size = l.hidden_size();
      t.bias = l.bias();
      LSTMSERVE_ASSIGN_OR_RETURN(
          t.weight_init, InitializerFromProto(l.has_weight_initializer(), l.weight_initializer(),
                                              core::Initializer::DefaultWeight(), "spec.lstm.weight_initializer"));
      LSTMSERVE_ASSIGN_OR_RETURN(t.bias_init,
                                 InitializerFromProto(l.has_bias_initializer(), l.bias_initializer(),
                                                      core::Initializer::DefaultBias(), "spec.lstm.bias_initializer"));
      out.lstm = t;
      break;
    }
    case v1::ParameterSetSpec::kTensorList: {
      if (spec.tensor_list().tensors().empty()) {
        return absl::InvalidArgumentError("spec.tensor_list.tensors is empty; give at least one tensor");
      }
      for (int i = 0; i < spec.tensor_list().tensors_size(); ++i) {
        const auto& t = spec.tensor_list().tensors(i);
        const std::string field = absl::StrCat("spec.tensor_list.tensors[", i, "].initializer");
        LSTMSERVE_ASSIGN_OR_RETURN(
            core::Initializer init,
            InitializerFromProto(t.has_initializer(), t.initializer(), core::Initializer::DefaultWeight(), field));
        out.tensors.push_back({t.name(), {t.shape().begin(), t.shape().end()}, init});
      }
      break;
    }
    case v1::ParameterSetSpec::LAYOUT_NOT_SET:
      return absl::InvalidArgumentError("spec has no layout; set spec.lstm or spec.tensor_list");
  }
  return out;
}

}  // namespace lstmserve::wire
