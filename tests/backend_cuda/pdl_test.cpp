// Programmatic Dependent Launch: every kernel may start while the previous one still runs and orders
// itself with griddepcontrol.wait. A decode step's launch sequence at gpt-oss-20b shapes (norm, qkv
// product, RoPE + KV store, attention, o product, residual + norm, router, expert products, final norm), run
// back to back on a stream and replayed from a captured graph, must give the same bits as the same
// launches with a host synchronisation after each one (a read before the wait would see stale data).
// Where the device runs sm_90 code the chain also runs with the single-block RMSNorm (same bits);
// pre-sm_90 code launches without PDL, and the test checks plain stream order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "backend/cuda/kernels.h"
#include "backend_cuda/cuda_test_util.h"

namespace gptoss::testing {
namespace {

constexpr int kH = 2880, kHeads = 64, kKvHeads = 8, kHeadDim = 64, kExperts = 8, kTopK = 4, kInter = 2880;
constexpr int kQkvRows = (kHeads + 2 * kKvHeads) * kHeadDim, kQ = kHeads * kHeadDim, kCap = 256, kLayers = 3;

// fp16-pair rows ([hi: half][lo: half] each) with NaN in the `valid` leading columns of each half and
// zero padding.
std::vector<uint16_t> poisoned_pairs(int rows, int half, int valid) {
  std::vector<uint16_t> v(static_cast<size_t>(rows) * 2 * half, 0);
  for (size_t h = 0; h < static_cast<size_t>(rows) * 2; ++h)
    std::fill_n(v.begin() + static_cast<std::ptrdiff_t>(h * half), valid, uint16_t{0xffff});
  return v;
}

struct Experts {
  int rows, kblocks;
  DevArray<uint8_t> blocks, scales;
  DevArray<float> bias;
  Experts(int rows_, int cols, uint64_t seed)
      : rows(rows_),
        kblocks(static_cast<int>(cuda::round_up(cols / 32, 4))),
        blocks(random_bytes(static_cast<size_t>(kExperts) * rows_ * kblocks * 16, seed)),
        scales(random_bytes(static_cast<size_t>(kExperts) * rows_ * kblocks, seed + 1, 118, 10)),
        bias(random_f32(static_cast<size_t>(kExperts) * rows_, seed + 2, 0.5f)) {}
  // Per-pair decode products of activations x (fp16 pairs, hi/lo `half` apart).
  cuda::MoeDecodeArgs args(const int32_t* experts, int pairs, const uint16_t* x, int64_t half) const {
    cuda::MoeDecodeArgs a;
    cuda::set_mxfp4_experts(a, blocks.get(), scales.get(), rows, rows, kblocks);
    a.experts = experts, a.pairs = pairs;
    a.x = x, a.x_stride = 2 * half, a.x_lo = half;
    return a;
  }
};

// Weights (fp16 dense matrices in any column order: only bit equality between runs is checked) and
// the step's buffers.
struct Step {
  int T;
  int hp = static_cast<int>(cuda::round_up(kH, cuda::kActPad)), qp = kQ,
      ip = static_cast<int>(cuda::round_up(kInter, cuda::kActPad));
  int qkv_seg, qkv_nseg, o_seg, o_nseg;
  DevArray<uint16_t> w_qkv, w_o, router_w;
  DevArray<float> b_qkv, b_o, router_b, gain, inv_freq, sinks;
  Experts mlp1{2 * kInter, kH, 31}, mlp2{kH, kInter, 34};
  DevArray<int32_t> pos, slot;
  DevArray<cuda::AttnItem> items;
  std::vector<float> h0, k0, v0;
  DevArray<float> h, x32, qkv, q32, proj, logits, wts, y;
  DevArray<uint16_t> kc, vc, x16, o16, a16;  // the f32 caches as hi/lo planes
  DevArray<unsigned int> counters;
  DevArray<int32_t> idx;

  explicit Step(int t)
      : T(t),
        w_qkv(to_f16(random_f32(static_cast<size_t>(kQkvRows) * kH, 1, 0.04f))),
        w_o(to_f16(random_f32(static_cast<size_t>(kH) * kQ, 2, 0.03f))),
        router_w(random_bf16(static_cast<size_t>(kExperts) * kH, 3, 0.05f)),
        b_qkv(random_f32(kQkvRows, 4, 0.5f)),
        b_o(random_f32(kH, 5, 0.5f)),
        router_b(random_f32(kExperts, 6, 0.5f)),
        gain(random_f32(kH, 7, 1.0f)),
        inv_freq(static_cast<size_t>(kHeadDim / 2)),
        sinks(random_f32(kHeads, 8, 2.0f)),
        pos(static_cast<size_t>(t)),
        slot(static_cast<size_t>(t)),
        items(static_cast<size_t>(t)),
        h0(random_f32(static_cast<size_t>(t) * kH, 9, 3.0f)),
        k0(random_f32(static_cast<size_t>(t) * kKvHeads * kCap * kHeadDim, 10, 1.0f)),
        v0(random_f32(k0.size(), 11, 1.0f)),
        h(h0.size()),
        x32(h0.size()),
        qkv(static_cast<size_t>(16) * t * kQkvRows),
        q32(static_cast<size_t>(t) * kQ),
        proj(static_cast<size_t>(16) * t * kH),
        logits(static_cast<size_t>(t) * kExperts),
        wts(static_cast<size_t>(t) * kTopK),
        y(static_cast<size_t>(t) * kTopK * kH),
        kc(2 * k0.size()),
        vc(2 * k0.size()),
        x16(static_cast<size_t>(t) * 2 * hp),
        o16(static_cast<size_t>(t) * 2 * qp),
        a16(static_cast<size_t>(t) * kTopK * 2 * ip),
        counters(static_cast<size_t>(t)),
        idx(static_cast<size_t>(t) * kTopK) {
    cuda::gemm_segments(kH / 32, &qkv_seg, &qkv_nseg);
    cuda::gemm_segments(kQ / 32, &o_seg, &o_nseg);
    std::vector<float> f(kHeadDim / 2);
    for (int i = 0; i < kHeadDim / 2; ++i) f[static_cast<size_t>(i)] = std::pow(150000.0f, -2.0f * i / kHeadDim);
    inv_freq.upload(f);
    // Token i: its own sequence in slot i at position 100 + 7i (a decode step of T sequences).
    std::vector<int32_t> p(static_cast<size_t>(t)), s(static_cast<size_t>(t));
    std::vector<cuda::AttnItem> it(static_cast<size_t>(t));
    for (int i = 0; i < t; ++i)
      p[static_cast<size_t>(i)] = 100 + 7 * i, s[static_cast<size_t>(i)] = i, it[static_cast<size_t>(i)] = {i, 1, i, 0};
    pos.upload(p), slot.upload(s), items.upload(it);
  }

  cuda::GemmArgs dense(const DevArray<uint16_t>& w, int rows, int kblocks, int seg, int nseg, const uint16_t* x,
                       int64_t half, float* out) const {
    cuda::GemmArgs a;
    a.weights = cuda::GemmWeights::kF16, a.w = w.get(), a.rows = rows, a.kblocks = kblocks;
    a.seg_blocks = seg, a.nseg = nseg, a.x = x, a.x_stride = 2 * half, a.x_lo = half, a.n = T;
    a.mode = cuda::GemmOut::kPartial, a.out = out, a.out_stride = rows;
    a.part_stride = static_cast<int64_t>(T) * rows;
    return a;
  }

  // A dense product as the backend runs it: the decode GEMV for a few tokens, else the GEMM.
  cudaError_t product(const cuda::GemmArgs& a, const cuda::Launch& ln) const {
    return T <= cuda::kDenseGemvTokens ? cuda::dense_gemv_launch(a, ln)
                                       : cuda::gemm_launch(a, cuda::gemm_tile_cols(T), ln);
  }

  // The launches of kLayers layers (the same weights each time) and the final norm; `after` runs
  // after each launch.
  cudaError_t enqueue(const cuda::Launch& ln, const std::function<cudaError_t()>& after) {
    const cuda::AttnShape shape{kHeads, kKvHeads, kHeadDim, kHeadDim};
    cuda::KvLayer kv;
    kv.k = kc.get(), kv.v = vc.get(), kv.cap = kCap;
    const int P = T * kTopK;
    cuda::ResidualAdd pending;
    auto run = [&](cudaError_t e) { return e != cudaSuccess ? e : after(); };
#define PDL_TRY(expr)                   \
  do {                                  \
    const cudaError_t e_ = run((expr)); \
    if (e_ != cudaSuccess) return e_;   \
  } while (0)
    for (int l = 0; l < kLayers; ++l) {
      PDL_TRY(cuda::add_rmsnorm_launch(h.get(), T, kH, pending, gain.get(), 1e-5f, x16.get(), 2 * hp, hp, nullptr, ln));
      PDL_TRY(product(dense(w_qkv, kQkvRows, kH / 32, qkv_seg, qkv_nseg, x16.get(), hp, qkv.get()), ln));
      cuda::QkvRopeArgs r;
      r.parts = qkv.get(), r.nparts = qkv_nseg, r.part_stride = static_cast<int64_t>(T) * kQkvRows;
      r.stride = kQkvRows, r.bias = b_qkv.get(), r.pos = pos.get(), r.slot = slot.get();
      r.inv_freq = inv_freq.get(), r.q32 = q32.get();
      PDL_TRY(cuda::qkv_rope_launch(r, T, shape, kv, ln));
      cuda::AttnArgs at;
      at.q32 = q32.get(), at.pos = pos.get(), at.items = items.get(), at.n_items = T, at.tokens_per_item = 1;
      at.sinks = sinks.get(), at.o16 = o16.get(), at.o_stride = 2 * qp, at.o_lo = qp, at.n_tokens = T;
      PDL_TRY(cuda::attention_launch(at, shape, kv, ln));
      PDL_TRY(product(dense(w_o, kH, kQ / 32, o_seg, o_nseg, o16.get(), qp, proj.get()), ln));
      cuda::ResidualAdd add;
      add.parts = proj.get(), add.nparts = o_nseg, add.part_stride = static_cast<int64_t>(T) * kH, add.stride = kH;
      add.bias = b_o.get();
      PDL_TRY(cuda::add_rmsnorm_launch(h.get(), T, kH, add, gain.get(), 1e-5f, x16.get(), 2 * hp, hp, x32.get(), ln));
      PDL_TRY(cuda::router_launch(x32.get(), T, kH, router_w.get(), router_b.get(), kExperts, kTopK, idx.get(),
                                  wts.get(), cuda::RouterStatsDev{}, nullptr,
                                  cuda::RouterWork{logits.get(), counters.get()}, ln));
      cuda::MoeDecodeArgs v1 = mlp1.args(idx.get(), P, x16.get(), hp);
      v1.x_row_div = kTopK, v1.bias = mlp1.bias.get(), v1.bias_expert_stride = mlp1.rows;
      v1.out16 = a16.get(), v1.out16_stride = 2 * ip, v1.out16_lo = ip;
      PDL_TRY(cuda::moe_decode_launch(v1, ln));
      cuda::MoeDecodeArgs v2 = mlp2.args(idx.get(), P, a16.get(), ip);
      v2.out = y.get(), v2.out_stride = kH;
      PDL_TRY(cuda::moe_decode_launch(v2, ln));
      pending = cuda::ResidualAdd{};
      pending.parts = y.get(), pending.nparts = 1, pending.part_stride = static_cast<int64_t>(P) * kH;
      pending.stride = kH, pending.top_k = kTopK, pending.experts = idx.get(), pending.weights = wts.get();
      pending.expert_bias = mlp2.bias.get(), pending.expert_bias_stride = kH;
    }
    PDL_TRY(cuda::add_rmsnorm_launch(h.get(), T, kH, pending, gain.get(), 1e-5f, x16.get(), 2 * hp, hp, nullptr, ln));
#undef PDL_TRY
    return cudaSuccess;
  }

  // Resets the state and poisons the intermediate buffers (zeroes the padded fp16-pair rows).
  void reset() {
    h.upload(h0), kc.upload(kv_cache_planes(k0, kHeadDim)), vc.upload(kv_cache_planes(v0, kHeadDim));
    for (auto* b : {&x32, &qkv, &q32, &proj, &wts, &y, &logits}) b->fill_bytes(0xff);
    o16.fill_bytes(0xff), idx.fill_bytes(0xff);
    // The fp16-pair rows are read up to their padded length (kblocks·32): their padding must be zero
    // (as in the backend's scratch), their valid columns are poisoned like the other buffers.
    x16.upload(poisoned_pairs(T, hp, kH));
    a16.upload(poisoned_pairs(T * kTopK, ip, kInter));
    cudaDeviceSynchronize();
  }

  struct Result {
    std::vector<float> h;
    std::vector<uint16_t> k, v;
    std::vector<float> x32;
    std::vector<uint16_t> x16;
    std::vector<int32_t> idx;
  };
  Result result() const {
    return {h.download(), kc.download(), vc.download(), x32.download(), x16.download(), idx.download()};
  }
};

template <typename T>
bool same_bytes(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

void expect_same(const Step::Result& a, const Step::Result& b, const char* what) {
  EXPECT_TRUE(same_bytes(a.h, b.h)) << what << ": residual";
  EXPECT_TRUE(same_bytes(a.k, b.k)) << what << ": K cache";
  EXPECT_TRUE(same_bytes(a.v, b.v)) << what << ": V cache";
  EXPECT_TRUE(same_bytes(a.x32, b.x32)) << what << ": f32 activations";
  EXPECT_TRUE(same_bytes(a.x16, b.x16)) << what << ": fp16-pair activations";
  EXPECT_TRUE(same_bytes(a.idx, b.idx)) << what << ": routed experts";
}

class CudaPdlChain : public ::testing::TestWithParam<int> {};

TEST_P(CudaPdlChain, BackToBackAndGraphMatchSynchronizedLaunches) {
  Step s(GetParam());
  cudaStream_t st = nullptr;
  CUDA_ASSERT(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  const cuda::Launch ln = test_launch(st);

  s.reset();
  CUDA_ASSERT(s.enqueue(ln, [&] { return cudaStreamSynchronize(st); }));
  const Step::Result ref = s.result();
  for (float v : ref.h)
    ASSERT_TRUE(std::isfinite(v)) << "the chain must stay finite for the comparison to mean anything";

  for (int rep = 0; rep < 3; ++rep) {
    s.reset();
    CUDA_ASSERT(s.enqueue(ln, [] { return cudaSuccess; }));
    CUDA_ASSERT(cudaStreamSynchronize(st));
    expect_same(s.result(), ref, "back to back");
  }
  if (ln.clusters) {
    // The single-block RMSNorm in the same chain: the same bits as the cluster kernel.
    cuda::Launch block_norm = ln;
    block_norm.clusters = false;
    s.reset();
    CUDA_ASSERT(s.enqueue(block_norm, [] { return cudaSuccess; }));
    CUDA_ASSERT(cudaStreamSynchronize(st));
    expect_same(s.result(), ref, "single-block norm, back to back");
  }

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CUDA_ASSERT(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  const cudaError_t enq = s.enqueue(ln, [] { return cudaSuccess; });
  CUDA_ASSERT(cudaStreamEndCapture(st, &graph));
  CUDA_ASSERT(enq);
  CUDA_ASSERT(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 3; ++rep) {
    s.reset();
    CUDA_ASSERT(cudaGraphLaunch(exec, st));
    CUDA_ASSERT(cudaStreamSynchronize(st));
    expect_same(s.result(), ref, "graph replay");
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(st);
}

INSTANTIATE_TEST_SUITE_P(Tokens, CudaPdlChain, ::testing::Values(1, 5),
                         [](const auto& info) { return std::to_string(info.param) + "_tokens"; });

}  // namespace
}  // namespace gptoss::testing
