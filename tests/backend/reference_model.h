// A float64 gpt-oss forward pass written straight from the spec (§3, §4), recomputing attention
// over the whole sequence (no cache). Independent of src/backend; used to check the CPU backend on
// random models of shapes the fixtures do not cover.
#pragma once

#include <cstdint>
#include <vector>

#include "model/weights.h"

namespace gptoss::testing {

// Logits [tokens.size(), vocab] of one causal pass, every position.
std::vector<double> reference_logits(const Model& model, const std::vector<int32_t>& tokens);

}  // namespace gptoss::testing
