// launch_kernel: the one way the CUDA backend launches a kernel. Every launch allows Programmatic
// Dependent Launch (cudaLaunchAttributeProgrammaticStreamSerialization): the kernel may be
// scheduled while the previous kernel of the stream is still running, once that kernel's blocks
// have all called pdl_launch_dependents() (or exited), and it orders itself after that kernel with
// pdl_wait() (device_util.cuh), which every kernel must call. After a copy, a memset or an event
// in the stream the launch waits as usual. Stream capture turns the overlap into programmatic
// edges of the graph.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace gptoss::cuda {

template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t launch = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
  const cudaError_t last = cudaGetLastError();  // also clears a launch error
  return launch != cudaSuccess ? launch : last;
}

}  // namespace gptoss::cuda
