// The stacked-LSTM spec the core tests share: the template with biases drawn from
// uniform(-0.5, 0.5) (so that they matter), and optionally reduced weight storage.
#pragma once

#include <cstdint>

#include "lstmserve/core/parameter_set.h"

namespace lstmserve::core {

inline ParameterSetSpec TestLstmSpec(int64_t layers, int64_t input, int64_t hidden, bool bias, uint64_t seed,
                                     WeightStorage storage = WeightStorage::kDType) {
  ParameterSetSpec spec;
  spec.lstm = LstmTemplate{};
  spec.lstm->num_layers = layers;
  spec.lstm->input_size = input;
  spec.lstm->hidden_size = hidden;
  spec.lstm->bias = bias;
  spec.lstm->bias_init = Initializer::Uniform(-0.5, 0.5);
  spec.seed = seed;
  spec.weight_storage = storage;
  return spec;
}

}  // namespace lstmserve::core
