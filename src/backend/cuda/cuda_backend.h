// The CUDA backend (Hopper first): weights uploaded once, activations on the device for the whole
// step, tensor-core GEMMs (fp16 operands, f32 accumulation, MXFP4 experts dequantized in registers),
// flash attention with sinks over an fp16 KV cache, CUDA graphs for decode steps, one host sync per
// forward(). Plain C++ header: includable without the CUDA toolkit.
#pragma once

#include <memory>

#include "backend/backend.h"

namespace gptoss {

// Creates a CUDA backend on opts.device for `model`. Checks the options like the CPU backend and the
// shapes the kernels support (head_dim even and ≤ 128, ≤ 256 experts, top-k ≤ 8). Returns
// kUnavailable when no usable GPU is present (no device, driver too old, or a GPU this binary has
// no kernels for), kResourceExhausted when the weights, KV cache or scratch do not fit.
// Thread-safety: the returned object is not thread-safe; one thread drives it.
Result<std::unique_ptr<Backend>> cuda_backend_create(std::shared_ptr<const Model> model, const BackendOptions& opts);

// Measured device-memory bandwidth of `device` in bytes/s: a 1 GiB device-to-device copy, counting
// bytes read plus bytes written, best of a few runs. kUnavailable without a usable GPU.
Result<double> cuda_device_bandwidth(int device);

}  // namespace gptoss
