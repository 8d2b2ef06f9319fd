// Weight upload for the CUDA backend: one device arena, filled once through double-buffered pinned
// staging. Dense matrices become fp16 (exact for every bf16 value in fp16's range, which is
// checked), MXFP4 experts keep the checkpoint layout, small vectors become f32.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_internal.h"
#include "core/dtype.h"
#include "core/mxfp4.h"

namespace gptoss::cuda {

Status cuda_error(cudaError_t e, const std::string& what) {
  const ErrorCode code = e == cudaErrorMemoryAllocation ? ErrorCode::kResourceExhausted : ErrorCode::kInternal;
  return Status(code, what + ": " + cudaGetErrorString(e));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
Result<DeviceBuffer> DeviceBuffer::alloc(size_t bytes, const std::string& what) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  cudaError_t e = cudaMalloc(&b.ptr_, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    return Status(ErrorCode::kResourceExhausted, "cannot allocate " + std::to_string(bytes >> 20) +
                                                     " MiB of GPU memory for " + what + ": " + cudaGetErrorString(e));
  }
  b.bytes_ = bytes;
  GPTOSS_CUDA_TRY(cudaMemset(b.ptr_, 0, bytes), "clearing " + what);
  return b;
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_) cudaFreeHost(ptr_);
}
PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = o.ptr_, bytes_ = o.bytes_;
    o.ptr_ = nullptr, o.bytes_ = 0;
  }
  return *this;
}
Result<PinnedBuffer> PinnedBuffer::alloc(size_t bytes, const std::string& what) {
  PinnedBuffer b;
  GPTOSS_CUDA_TRY(cudaMallocHost(&b.ptr_, bytes), "pinned host memory for " + what);
  b.bytes_ = bytes;
  return b;
}

namespace {

constexpr size_t kAlign = 256;
constexpr size_t kStageBytes = size_t{32} << 20;

// Produces bytes [off, off + n) of one device tensor into dst (n and off multiples of 64).
using Producer = std::function<void(size_t off, size_t n, uint8_t* dst)>;

struct Item {
  size_t offset = 0, bytes = 0;
  Producer produce;
};

// Collects the device layout (offsets in the arena) before anything is allocated.
class Layout {
 public:
  size_t add(size_t bytes, Producer p) {
    const size_t off = total_;
    items_.push_back({off, bytes, std::move(p)});
    total_ += (bytes + kAlign - 1) / kAlign * kAlign;
    return off;
  }
  size_t total() const { return total_; }
  const std::vector<Item>& items() const { return items_; }

 private:
  std::vector<Item> items_;
  size_t total_ = 0;
};

// Set by producers that meet a value the device format cannot hold (first message wins).
struct UploadErrors {
  std::atomic<bool> failed{false};
  std::string message;
  void fail(const std::string& m) {
    bool expected = false;
    if (failed.compare_exchange_strong(expected, true)) message = m;
  }
};

Producer f32_vector(const Weight& w, int64_t count, int64_t count_p) {
  return [&w, count, count_p](size_t off, size_t n, uint8_t* dst) {
    float* out = reinterpret_cast<float*>(dst);
    for (size_t i = off / 4; i < (off + n) / 4; ++i)
      out[i - off / 4] =
          static_cast<int64_t>(i) % count_p < count
              ? bf16_to_f32(w.bf16()[static_cast<int64_t>(i) / count_p * count + static_cast<int64_t>(i) % count_p])
              : 0.0f;
  };
}

// Rows of several bf16 matrices stacked ([rows_i][cols] each) → fp16 [rows_p][kp], zero padded,
// columns in k_phys order (like the activations they multiply).
Producer f16_rows(std::vector<const Weight*> parts, int64_t cols, int64_t kp, UploadErrors* errors) {
  return [parts, cols, kp, errors](size_t off, size_t n, uint8_t* dst) {
    uint16_t* out = reinterpret_cast<uint16_t*>(dst);
    const int64_t first = static_cast<int64_t>(off / 2), last = static_cast<int64_t>((off + n) / 2);
    for (int64_t i = first; i < last;) {
      int64_t r = i / kp, c = i % kp;
      const int64_t run = std::min(kp - c, last - i);
      const uint16_t* src = nullptr;
      for (const Weight* w : parts) {
        if (r < w->shape[0]) {
          src = w->bf16() + r * cols;
          break;
        }
        r -= w->shape[0];
      }
      for (int64_t k = 0; k < run; ++k, ++c) {
        uint16_t h = 0;
        const int64_t cl = (c & ~int64_t{7}) | ((c & 7) >> 1) | ((c & 1) << 2);  // inverse of k_phys
        if (src && cl < cols) {
          const float f = bf16_to_f32(src[cl]);
          if (std::isfinite(f) && std::fabs(f) > 65504.0f)
            errors->fail("a weight of magnitude " + std::to_string(f) + " does not fit fp16");
          h = f32_to_f16(f);
        }
        out[i + k - first] = h;
      }
      i += run;
    }
  };
}

// MXFP4 codes (tile_bytes = 16·kblocks·16) or scales (16·kblocks) of every expert in the device
// layout, one 16-row tile at a time (fill: mxfp4_tile_codes or mxfp4_tile_scales); `src` holds
// `row_bytes` per checkpoint row, `rows` rows per expert.
Producer mxfp4_tiles(const uint8_t* src, int64_t row_bytes, int64_t rows, int nb, int64_t rows_p, int kblocks,
                     int64_t tile_bytes, void (*fill)(const uint8_t*, int, int, int, uint8_t*)) {
  return [=](size_t off, size_t n, uint8_t* dst) {
    const int64_t tiles_per_expert = rows_p / kMxfp4TileRows;
    const int64_t begin = static_cast<int64_t>(off), end = static_cast<int64_t>(off + n);
    std::vector<uint8_t> tmp(static_cast<size_t>(tile_bytes));
    for (int64_t tile = begin / tile_bytes; tile * tile_bytes < end; ++tile) {
      const int64_t e = tile / tiles_per_expert, r0 = tile % tiles_per_expert * kMxfp4TileRows;
      const int nrows = static_cast<int>(std::clamp<int64_t>(rows - r0, 0, kMxfp4TileRows));
      fill(nrows > 0 ? src + (e * rows + r0) * row_bytes : src, nrows, nb, kblocks, tmp.data());
      const int64_t lo = std::max(tile * tile_bytes, begin), hi = std::min((tile + 1) * tile_bytes, end);
      std::memcpy(dst + (lo - begin), tmp.data() + (lo - tile * tile_bytes), static_cast<size_t>(hi - lo));
    }
  };
}

Producer raw_bytes(const void* src) {
  return [src](size_t off, size_t n, uint8_t* dst) { std::memcpy(dst, static_cast<const uint8_t*>(src) + off, n); };
}

Status check_scales(const Weight& scales) {
  // 6·2^(s−127) must stay below fp16's 65504 for the dequantized weights (s ≤ 140).
  const uint8_t* s = scales.u8();
  const uint8_t mx = scales.nbytes ? *std::max_element(s, s + scales.nbytes) : 0;
  if (mx > 140)
    return make_error(ErrorCode::kFormat, "tensor '{}': MXFP4 scale 2^{} exceeds the CUDA backend's fp16 range",
                      scales.name, static_cast<int>(mx) - 127);
  return Status::ok_status();
}

struct Planner {
  Layout layout;
  UploadErrors errors;
  int64_t hidden_p = 0;
  std::vector<std::pair<const void**, size_t>> fixups;  // device pointer fields → arena offset

  template <typename T>
  void place(const T** field, size_t bytes, Producer p) {
    fixups.push_back({reinterpret_cast<const void**>(field), layout.add(bytes, std::move(p))});
  }
  void f32(const float** field, const Weight& w, int64_t count, int64_t count_p, int64_t groups = 1) {
    place(field, static_cast<size_t>(groups * count_p) * 4, f32_vector(w, count, count_p));
  }
  void dense(DenseDev& d, std::vector<const Weight*> parts, int64_t cols) {
    int64_t rows = 0;
    for (const Weight* w : parts) rows += w->shape[0];
    d.rows = static_cast<int>(rows);
    d.rows_p = static_cast<int>(round_up(rows, kRowTile));
    const int64_t kp = round_up(cols, kKPad);
    d.kblocks = static_cast<int>(kp / 32);
    place(&d.w, static_cast<size_t>(d.rows_p * kp) * 2, f16_rows(std::move(parts), cols, kp, &errors));
  }
  void experts(ExpertsDev& x, const Mxfp4Experts& m, int64_t n_experts) {
    x.rows = static_cast<int>(m.rows);
    x.rows_p = static_cast<int>(round_up(m.rows, kRowTile));
    const int64_t nb = m.cols / 32;
    x.kblocks = static_cast<int>(round_up(nb, 4));
    const int64_t tile = int64_t{kMxfp4TileRows} * x.kblocks;
    place(&x.blocks, static_cast<size_t>(n_experts * x.rows_p * x.kblocks * 16),
          mxfp4_tiles(m.blocks.u8(), nb * 16, m.rows, static_cast<int>(nb), x.rows_p, x.kblocks, tile * 16,
                      mxfp4_tile_codes));
    place(&x.scales, static_cast<size_t>(n_experts * x.rows_p * x.kblocks),
          mxfp4_tiles(m.scales.u8(), nb, m.rows, static_cast<int>(nb), x.rows_p, x.kblocks, tile, mxfp4_tile_scales));
    f32(&x.bias, m.bias, m.rows, x.rows_p, n_experts);
  }
};

Status copy_items(const Layout& layout, uint8_t* arena, cudaStream_t stream, ThreadPool* pool, UploadErrors* errors) {
  PinnedBuffer stage[2];
  cudaEvent_t done[2] = {nullptr, nullptr};
  for (int b = 0; b < 2; ++b) {
    GPTOSS_ASSIGN_OR_RETURN(stage[b], PinnedBuffer::alloc(kStageBytes, "weight staging"));
    GPTOSS_CUDA_TRY(cudaEventCreateWithFlags(&done[b], cudaEventDisableTiming), "creating an upload event");
  }
  Status st;
  int k = 0;
  for (const Item& item : layout.items()) {
    for (size_t off = 0; off < item.bytes && st.ok(); off += kStageBytes, ++k) {
      const size_t n = std::min(kStageBytes, item.bytes - off);
      const int b = k & 1;
      if (cudaEventSynchronize(done[b]) != cudaSuccess) st = cuda_error(cudaGetLastError(), "weight upload");
      const size_t n64 = (n + 63) / 64 * 64;  // producers work on 64-byte multiples
      const int64_t parts = pool && n64 >= (size_t{1} << 20) ? pool->size() : 1;
      const size_t step = (n64 / static_cast<size_t>(parts) + 63) / 64 * 64;
      auto run = [&](int64_t lo, int64_t hi) {
        for (int64_t p = lo; p < hi; ++p) {
          const size_t a = static_cast<size_t>(p) * step, e = std::min(n64, a + step);
          if (a < e)
            item.produce(off + a, std::min(e, item.bytes - off) - std::min(a, item.bytes - off), stage[b].data() + a);
        }
      };
      if (parts > 1)
        pool->parallel_for(parts, 1, run);
      else
        run(0, 1);
      const cudaError_t e =
          cudaMemcpyAsync(arena + item.offset + off, stage[b].data(), n, cudaMemcpyHostToDevice, stream);
      if (e != cudaSuccess) st = cuda_error(e, "weight upload");
      if (st.ok() && cudaEventRecord(done[b], stream) != cudaSuccess)
        st = cuda_error(cudaGetLastError(), "weight upload");
    }
    if (!st.ok()) break;
  }
  const cudaError_t e = cudaStreamSynchronize(stream);
  for (cudaEvent_t ev : done) cudaEventDestroy(ev);
  if (!st.ok()) return st;
  if (e != cudaSuccess) return cuda_error(e, "weight upload");
  if (errors->failed.load()) return Status(ErrorCode::kFormat, "CUDA weight upload: " + errors->message);
  return Status::ok_status();
}

}  // namespace

Result<std::unique_ptr<ModelDev>> model_upload(const Model& model, cudaStream_t stream, ThreadPool* pool) {
  const Config& c = model.config();
  const ModelWeights& w = model.weights();
  auto dev = std::make_unique<ModelDev>();
  Planner pl;
  const int64_t E = c.num_local_experts;
  pl.place(&dev->embed, w.embed.nbytes, raw_bytes(w.embed.data));
  pl.f32(&dev->final_norm, w.final_norm, c.hidden_size, c.hidden_size);
  pl.dense(dev->lm_head, {&w.lm_head}, c.hidden_size);
  dev->layers.resize(w.layers.size());
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerDev& ld = dev->layers[l];
    GPTOSS_RETURN_IF_ERROR(check_scales(lw.mlp1.scales));
    GPTOSS_RETURN_IF_ERROR(check_scales(lw.mlp2.scales));
    pl.f32(&ld.attn_norm, lw.attn_norm, c.hidden_size, c.hidden_size);
    pl.dense(ld.qkv, {&lw.q_w, &lw.k_w, &lw.v_w}, c.hidden_size);
    const int64_t qkv_rows = c.q_dim() + 2 * c.kv_dim();
    pl.place(&ld.qkv_b, static_cast<size_t>(qkv_rows) * 4, [&lw, &c](size_t off, size_t n, uint8_t* dst) {
      float* out = reinterpret_cast<float*>(dst);
      for (size_t i = off / 4; i < (off + n) / 4; ++i) {
        const int64_t r = static_cast<int64_t>(i);
        const uint16_t v = r < c.q_dim()                ? lw.q_b.bf16()[r]
                           : r < c.q_dim() + c.kv_dim() ? lw.k_b.bf16()[r - c.q_dim()]
                                                        : lw.v_b.bf16()[r - c.q_dim() - c.kv_dim()];
        out[i - off / 4] = bf16_to_f32(v);
      }
    });
    pl.dense(ld.o, {&lw.o_w}, c.q_dim());
    pl.f32(&ld.o_b, lw.o_b, c.hidden_size, c.hidden_size);
    pl.f32(&ld.sinks, lw.sinks, c.num_attention_heads, c.num_attention_heads);
    pl.f32(&ld.mlp_norm, lw.mlp_norm, c.hidden_size, c.hidden_size);
    pl.place(&ld.router_w, lw.router_w.nbytes, raw_bytes(lw.router_w.data));
    pl.f32(&ld.router_b, lw.router_b, E, E);
    pl.experts(ld.mlp1, lw.mlp1, E);
    pl.experts(ld.mlp2, lw.mlp2, E);
  }
  const cpu::RopeTable rope = cpu::rope_table(c);
  dev->concentration = rope.concentration;
  pl.place(&dev->inv_freq, rope.inv_freq.size() * 4, [rope](size_t off, size_t n, uint8_t* dst) {
    std::memcpy(dst, reinterpret_cast<const uint8_t*>(rope.inv_freq.data()) + off,
                std::min(n, rope.inv_freq.size() * 4 - off));
  });

  GPTOSS_ASSIGN_OR_RETURN(dev->arena, DeviceBuffer::alloc(pl.layout.total(), "the model weights"));
  for (auto& [field, off] : pl.fixups) *field = dev->arena.data() + off;
  GPTOSS_RETURN_IF_ERROR(copy_items(pl.layout, dev->arena.data(), stream, pool, &pl.errors));
  return dev;
}

namespace {

// Bits that checkpoint byte i (elements 2i and 2i + 1) of a lane's 4 bytes contributes to its code
// word, in the decode order of mxfp4_pair_x2m14.
constexpr std::array<std::array<uint32_t, 256>, 4> kCodeWordBits = [] {
  std::array<std::array<uint32_t, 256>, 4> bits{};
  for (int i = 0; i < 4; ++i)
    for (uint32_t v = 0; v < 256; ++v)
      for (int h = 0; h < 2; ++h) {
        const uint32_t code = (v >> (4 * h)) & 0xFu;
        bits[i][v] |= (code & 7u) << kMxfp4MagBit[2 * i + h] | (code >> 3) << kMxfp4SignBit[2 * i + h];
      }
  return bits;
}();

}  // namespace

void mxfp4_tile_codes(const uint8_t* blocks, int nrows, int nb, int kblocks, uint8_t* out) {
  for (int q = 0; q < kblocks / 4; ++q)
    for (int r = 0; r < kMxfp4TileRows; ++r)
      for (int t = 0; t < 4; ++t)
        for (int b = 0; b < 4; ++b) {
          const int blk = 4 * q + b;
          uint32_t w = 0;
          if (r < nrows && blk < nb) {
            const uint8_t* p = blocks + (static_cast<int64_t>(r) * nb + blk) * 16 + 4 * t;
            w = kCodeWordBits[0][p[0]] | kCodeWordBits[1][p[1]] | kCodeWordBits[2][p[2]] | kCodeWordBits[3][p[3]];
          }
          std::memcpy(out + mxfp4_code_offset(r, q, kblocks) + 16 * t + 4 * b, &w, 4);
        }
}

void mxfp4_tile_scales(const uint8_t* scales, int nrows, int nb, int kblocks, uint8_t* out) {
  for (int r = 0; r < kMxfp4TileRows; ++r)
    for (int blk = 0; blk < kblocks; ++blk)
      out[mxfp4_scale_offset(r, blk, kblocks)] = r < nrows && blk < nb ? scales[static_cast<int64_t>(r) * nb + blk] : 0;
}

GemmPlan gemm_plan_dense(int rows, int kblocks, int n, int sm_count) {
  GemmPlan p;
  p.nt = gemm_tile_cols(n);
  gemm_segments(kblocks, &p.seg_blocks, &p.nseg);
  const int tiles = (n + p.nt - 1) / p.nt;
  p.split = p.nseg > 1 && gemm_use_split(rows, tiles, sm_count);
  return p;
}

GemmPlan gemm_plan_moe(int rows, int kblocks, int pairs, int experts, int sm_count) {
  GemmPlan p;
  // Column tiles of about twice the mean tokens per expert: with routing spread unevenly, a tile
  // of the mean would split many experts over two tiles, each reading the expert's weights again.
  p.nt = gemm_tile_cols(2 * ((pairs + experts - 1) / experts));
  gemm_segments(kblocks, &p.seg_blocks, &p.nseg);
  p.max_tiles = moe_max_tiles(pairs, experts, p.nt);
  const int expected_tiles = std::max((pairs + p.nt - 1) / p.nt, std::min(pairs, experts));
  p.split = p.nseg > 1 && gemm_use_split(rows, expected_tiles, sm_count);
  return p;
}

int attention_splits(int items, int kv_heads, int head_chunks, int warps, int sm_count) {
  // (Measured on an H100, pp2048: blocks of 8 warps split in two by a block count that ignored their
  // size spent 3.6 ms a step in the split merge, more than the 1.7 ms their larger tiles saved.)
  const int64_t block_warps = std::max<int64_t>(1, int64_t{items} * kv_heads * head_chunks * std::max(1, warps));
  const int64_t want = (32 * int64_t{sm_count} + block_warps - 1) / block_warps;
  return static_cast<int>(std::clamp<int64_t>(want, 1, 256));
}

}  // namespace gptoss::cuda
