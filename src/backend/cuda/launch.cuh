// launch_kernel: the one way the CUDA backend launches a kernel. With Launch::pdl (the kernel image
// is sm_90 code, see launch_target in kernels.h) every launch allows Programmatic Dependent Launch
// (cudaLaunchAttributeProgrammaticStreamSerialization): the kernel may be scheduled while the
// previous kernel of the stream is still finishing (once that kernel's blocks have all exited: no
// kernel triggers early, see device_util.cuh), and it orders itself after that kernel with pdl_wait()
// (device_util.cuh), which every kernel must call. After a copy, a memset or an event in the stream
// the launch waits as usual. Stream capture turns the overlap into programmatic edges of the graph.
// Without Launch::pdl (code for sm_80/sm_89, where pdl_wait compiles to nothing) the attribute is
// not set: a kernel that launched early without waiting could read its predecessor's output before
// it is written.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/kernels.h"

namespace gptoss::cuda {

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, const Launch& l,
                          Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = l.stream;
  cfg.attrs = attr;
  cfg.numAttrs = l.pdl ? 1 : 0;
  const cudaError_t launch = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  const cudaError_t last = cudaGetLastError();  // also clears a launch error
  return launch != cudaSuccess ? launch : last;
}

}  // namespace gptoss::cuda
