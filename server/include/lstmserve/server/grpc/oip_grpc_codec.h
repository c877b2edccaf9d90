// The Open Inference Protocol's gRPC messages to and from the protocol-neutral values of
// oip/open_inference.h (used by server/src/grpc/oip_grpc_service.cc, and fuzzed on their own).
#pragma once

#include "absl/status/statusor.h"

#include "inference/grpc_service.pb.h"
#include "lstmserve/server/oip/open_inference.h"

namespace lstmserve::server {

// Moves what a parsed request carries into the protocol-neutral request (its raw bytes are
// taken, not copied). INVALID_ARGUMENT for sequence parameters of the wrong type, a
// raw_input_contents count that is not the inputs', or an input without data.
absl::StatusOr<oip::InferRequest> RequestFromProto(inference::ModelInferRequest& request);

// Moves an answer into the response message (outputs as raw_output_contents).
void ResponseToProto(oip::InferResponse& response, inference::ModelInferResponse* out);

}  // namespace lstmserve::server
