// The tensor-core GEMM (dense fp16 and MXFP4 experts) and the decode expert kernel against float64
// derivations and the CPU reference ops, on gpt-oss and awkward shapes; split-K partials, batch size
// and the decode kernel's mode must not change a single bit of any output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>

#include "backend/cpu/ops.h"
#include "backend/cuda/cuda_internal.h"
#include "backend/cuda/kernels.h"
#include "backend_cuda/cuda_test_util.h"
#include "core/mxfp4.h"

namespace gptoss::testing {
namespace {

using cuda::GemmArgs;
using cuda::GemmOut;
using cuda::GemmWeights;

// Activations enter as fp16 pairs (hi + lo carries x to 2^-22 relative) and the f32 tensor-core
// accumulation adds 16 exact products per mma with a few ulps of truncation: the error of one
// output stays below ~(2·K/16 + 16)·2^-23·Σ|w·x| + 2^-21·Σ|w·x|.
double mma_tolerance(int cols, double abs_sum) {
  return ((2.0 * cols / 16.0 + 16.0) * std::ldexp(1.0, -23) + std::ldexp(1.0, -21)) * abs_sum + 1e-30;
}

bool same_bits(float a, float b) {
  return std::memcmp(&a, &b, 4) == 0;
}

// The launch target without the warpgroup MMA expert kernel: the bit-level properties of the
// mma.sync GEMM family (a token alone, split partials, the tiled kernel) hold among those kernels.
cuda::Launch mma_launch() {
  cuda::Launch l = test_launch();
  l.wgmma = false;
  return l;
}

struct DenseCase {
  int rows, cols, n;
};

class DenseGemmTest : public ::testing::TestWithParam<DenseCase> {};

struct DenseSetup {
  int rows_p, kp, kblocks, seg, nseg;
  std::vector<uint16_t> wb;  // bf16 [rows][cols]
  std::vector<float> wf;     // the same weights in f32
  std::vector<float> x;      // f32 [n][cols]
};

DenseSetup make_dense(const DenseCase& c, uint64_t seed) {
  DenseSetup s;
  s.rows_p = static_cast<int>(cuda::round_up(c.rows, cuda::kRowTile));
  s.kp = static_cast<int>(cuda::round_up(c.cols, cuda::kKPad));
  s.kblocks = s.kp / 32;
  cuda::gemm_segments(s.kblocks, &s.seg, &s.nseg);
  s.wb = random_bf16(static_cast<size_t>(c.rows) * c.cols, seed, 2.0f / std::sqrt(static_cast<float>(c.cols)));
  s.wf.resize(s.wb.size());
  for (size_t i = 0; i < s.wf.size(); ++i) s.wf[i] = bf16_to_f32(s.wb[i]);
  s.x = random_f32(static_cast<size_t>(c.n) * c.cols, seed + 1, 3.0f);
  return s;
}

// Output `y` [rows] of token t against the float64 product (mma tolerance) and the CPU op.
void expect_dense_row(const DenseSetup& s, const DenseCase& c, int t, const float* y) {
  const float* xt = &s.x[static_cast<size_t>(t) * c.cols];
  for (int r = 0; r < c.rows; ++r) {
    double ref = 0, abs_sum = 0;
    for (int k = 0; k < c.cols; ++k) {
      const double p = static_cast<double>(s.wf[static_cast<size_t>(r) * c.cols + k]) * xt[k];
      ref += p, abs_sum += std::fabs(p);
    }
    ASSERT_NEAR(y[r], ref, mma_tolerance(c.cols, abs_sum)) << "token " << t << " row " << r;
  }
  // Both are near-f32 (pairs carry x to 2^-22).
  std::vector<float> cpu(static_cast<size_t>(c.rows));
  cpu::matmul_bf16(xt, 1, c.cols, s.wb.data(), nullptr, c.rows, cpu.data(), nullptr);
  EXPECT_LE(rel_l2(y, cpu.data(), c.rows), 1e-5) << "token " << t;
}

std::string dense_case_name(const ::testing::TestParamInfo<DenseCase>& info) {
  return "r" + std::to_string(info.param.rows) + "_k" + std::to_string(info.param.cols) + "_n" +
         std::to_string(info.param.n);
}

// fp16 copy padded to [rows_p][kp] with columns in the device's k_phys order (dense weights and
// activations alike).
std::vector<uint16_t> pad_f16(const std::vector<float>& m, int rows, int cols, int rows_p, int kp) {
  std::vector<uint16_t> out(static_cast<size_t>(rows_p) * kp, 0);
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < cols; ++k)
      out[static_cast<size_t>(r) * kp + cuda::k_phys(k)] = f32_to_f16(m[static_cast<size_t>(r) * cols + k]);
  return out;
}

// Activations as the device's fp16 pairs: row r = [hi: kp][lo: kp], columns in k_phys order.
std::vector<uint16_t> pad_pairs(const std::vector<float>& m, int rows, int cols, int kp) {
  std::vector<uint16_t> out(static_cast<size_t>(rows) * 2 * kp, 0);
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < cols; ++k) {
      const float v = m[static_cast<size_t>(r) * cols + k];
      const uint16_t hi = f32_to_f16(v);
      const size_t at = static_cast<size_t>(r) * 2 * kp + cuda::k_phys(k);
      out[at] = hi;
      out[at + kp] = f32_to_f16(v - f16_to_f32(hi));
    }
  return out;
}

// A DenseSetup with its weights (fp16 [rows_p][kp]) and activations (fp16 pairs) on the device.
struct DenseOnDevice {
  DenseSetup s;
  DevArray<uint16_t> w, x;
  DenseOnDevice(const DenseCase& c, uint64_t seed)
      : s(make_dense(c, seed)),
        w(pad_f16(s.wf, c.rows, c.cols, s.rows_p, s.kp)),
        x(pad_pairs(s.x, c.n, c.cols, s.kp)) {}
};

// Value of pair element k of row r ([hi: kp][lo: kp]).
float pair_value(const std::vector<uint16_t>& v, size_t r, int kp, int k) {
  const size_t at = r * 2 * kp + cuda::k_phys(k);
  return f16_to_f32(v[at]) + f16_to_f32(v[at + kp]);
}

GemmArgs dense_args(const DenseSetup& s, const DenseCase& c, const uint16_t* w, const uint16_t* x, int n, float* out) {
  GemmArgs a;
  a.weights = GemmWeights::kF16;
  a.w = w;
  a.rows = c.rows;
  a.kblocks = s.kblocks;
  a.seg_blocks = s.seg;
  a.nseg = s.nseg;
  a.x = x;
  a.x_stride = 2 * s.kp;
  a.x_lo = s.kp;
  a.n = n;
  a.out = out;
  a.out_stride = c.rows;
  a.part_stride = static_cast<int64_t>(n) * c.rows;
  return a;
}

TEST_P(DenseGemmTest, MatchesFloat64AndCpuReference) {
  const DenseCase c = GetParam();
  const DenseOnDevice d(c, 1000 + c.rows * 7 + c.cols + c.n);
  const DenseSetup& s = d.s;
  DevArray<float> out(static_cast<size_t>(c.n) * c.rows);
  out.fill_bytes(0xff);  // NaN poison: every output must be written
  CUDA_ASSERT(cuda::gemm_launch(dense_args(s, c, d.w.get(), d.x.get(), c.n, out.get()), cuda::gemm_tile_cols(c.n),
                                test_launch()));
  const std::vector<float> y = out.download();
  CUDA_ASSERT(cudaGetLastError());

  for (int t = 0; t < c.n; ++t) expect_dense_row(s, c, t, &y[static_cast<size_t>(t) * c.rows]);
}

TEST_P(DenseGemmTest, SplitPartialsAndBatchSizeDoNotChangeBits) {
  const DenseCase c = GetParam();
  const DenseOnDevice d(c, 2000 + c.rows + c.cols * 3 + c.n);
  const DenseSetup& s = d.s;
  DevArray<float> full(static_cast<size_t>(c.n) * c.rows), parts(static_cast<size_t>(s.nseg) * c.n * c.rows),
      single(static_cast<size_t>(c.rows));
  GemmArgs a = dense_args(s, c, d.w.get(), d.x.get(), c.n, full.get());
  CUDA_ASSERT(cuda::gemm_launch(a, cuda::gemm_tile_cols(c.n), test_launch()));
  a.mode = GemmOut::kPartial;
  a.out = parts.get();
  CUDA_ASSERT(cuda::gemm_launch(a, 8, test_launch()));
  // The last column alone, with the widest column tile.
  GemmArgs one = dense_args(s, c, d.w.get(), d.x.get() + static_cast<size_t>(c.n - 1) * 2 * s.kp, 1, single.get());
  CUDA_ASSERT(cuda::gemm_launch(one, 64, test_launch()));
  const std::vector<float> yf = full.download(), yp = parts.download(), y1 = single.download();
  for (int t = 0; t < c.n; ++t)
    for (int r = 0; r < c.rows; ++r) {
      const size_t i = static_cast<size_t>(t) * c.rows + r;
      float v = yp[i];
      for (int sg = 1; sg < s.nseg; ++sg) v += yp[static_cast<size_t>(sg) * c.n * c.rows + i];
      ASSERT_TRUE(same_bits(v, yf[i])) << "split sum differs at token " << t << " row " << r << ": " << v << " vs "
                                       << yf[i];
    }
  for (int r = 0; r < c.rows; ++r)
    ASSERT_TRUE(same_bits(y1[r], yf[static_cast<size_t>(c.n - 1) * c.rows + r]))
        << "batch-size dependence at row " << r;
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseGemmTest,
                         ::testing::Values(DenseCase{64, 64, 1}, DenseCase{100, 96, 7}, DenseCase{17, 32, 130},
                                           DenseCase{130, 160, 33}, DenseCase{256, 320, 64}, DenseCase{5120, 2880, 1},
                                           DenseCase{2880, 4096, 3}, DenseCase{1000, 2880, 65},
                                           DenseCase{3001, 2880, 9}, DenseCase{512, 2880, 200}),
                         dense_case_name);

// ---------------------------------------------------------------------------------------------
// The cuBLAS path of prefill-sized dense products: the same function (float64 within the mma
// tolerance, the CPU op to rel L2 1e-5) from the same fp16-pair inputs as the hi and lo parts of
// each token side by side, added as the consumers add them; deterministic run to run.
class CublasDenseTest : public ::testing::TestWithParam<DenseCase> {};

TEST_P(CublasDenseTest, MatchesFloat64AndCpuAndRepeatsItsBits) {
  const DenseCase c = GetParam();
  const DenseOnDevice d(c, 4000 + c.rows * 3 + c.cols + c.n);
  const DenseSetup& s = d.s;
  // Parts wider than the product (part_stride > rows): the gaps must stay untouched.
  const int width = c.rows + 3;
  DevArray<float> out(static_cast<size_t>(c.n) * 2 * width);
  out.fill_bytes(0xff);  // NaN poison: every output must be written
  Result<cuda::CublasHandle> h = cuda::CublasHandle::create(nullptr);
  ASSERT_TRUE(h.ok()) << h.status().message();
  GemmArgs a = dense_args(s, c, d.w.get(), d.x.get(), c.n, out.get());
  a.mode = GemmOut::kPartial;
  a.part_stride = width;
  a.out_stride = 2 * width;
  Status st = cuda::cublas_dense(*h, a);
  ASSERT_TRUE(st.ok()) << st.message();
  const std::vector<float> y = out.download();
  CUDA_ASSERT(cudaGetLastError());
  // Every token of small products; the first, middle and last of large ones (the float64 check is O(rows·cols)).
  std::vector<int> tokens;
  for (int t = 0; t < c.n; ++t)
    if (static_cast<int64_t>(c.n) * c.rows * c.cols <= (int64_t{1} << 28) || t == 0 || t == c.n / 2 || t == c.n - 1)
      tokens.push_back(t);
  std::vector<float> sum(static_cast<size_t>(c.rows));
  for (int t : tokens) {
    const float* hi = &y[static_cast<size_t>(t) * 2 * width];
    const float* lo = hi + width;
    for (int r = 0; r < c.rows; ++r) sum[static_cast<size_t>(r)] = hi[r] + lo[r];
    expect_dense_row(s, c, t, sum.data());
    for (int r = c.rows; r < width; ++r)
      for (const float* part : {hi, lo}) {
        uint32_t bits;
        std::memcpy(&bits, &part[r], 4);
        ASSERT_EQ(bits, 0xffffffffu) << "token " << t << " wrote past its part, column " << r;
      }
  }
  // Run to run: the same bits.
  DevArray<float> again(static_cast<size_t>(c.n) * 2 * width);
  a.out = again.get();
  st = cuda::cublas_dense(*h, a);
  ASSERT_TRUE(st.ok()) << st.message();
  const std::vector<float> y2 = again.download();
  for (int t = 0; t < c.n; ++t)
    for (int part = 0; part < 2; ++part)
      for (int r = 0; r < c.rows; ++r) {
        const size_t i = (static_cast<size_t>(t) * 2 + part) * width + r;
        ASSERT_TRUE(same_bits(y[i], y2[i]))
            << "token " << t << " part " << part << " row " << r << " changed between runs";
      }
}

TEST(CublasDense, RejectsWhatItCannotDo) {
  const DenseCase c{64, 64, 5};
  DenseSetup s = make_dense(c, 9);
  DevArray<uint16_t> w(static_cast<size_t>(s.rows_p) * s.kp), x(static_cast<size_t>(5) * 2 * s.kp);
  DevArray<float> out(static_cast<size_t>(5) * 2 * 64);
  Result<cuda::CublasHandle> h = cuda::CublasHandle::create(nullptr);
  ASSERT_TRUE(h.ok()) << h.status().message();
  GemmArgs a = dense_args(s, c, w.get(), x.get(), 5, out.get());
  a.mode = GemmOut::kPartial;
  a.part_stride = 64;
  a.out_stride = 128;
  ASSERT_TRUE(cuda::cublas_dense(*h, a).ok()) << "the valid arguments the cases below break one by one";
  a.weights = GemmWeights::kMxfp4;
  EXPECT_EQ(cuda::cublas_dense(*h, a).code(), ErrorCode::kInvalidArgument) << "MXFP4 weights";
  a.weights = GemmWeights::kF16;
  a.mode = GemmOut::kStore;
  EXPECT_EQ(cuda::cublas_dense(*h, a).code(), ErrorCode::kInvalidArgument) << "plain stores";
  a.mode = GemmOut::kPartial;
  a.out_stride = 64 * 5;
  EXPECT_EQ(cuda::cublas_dense(*h, a).code(), ErrorCode::kInvalidArgument) << "parts not side by side";
  a.part_stride = 10, a.out_stride = 20;
  EXPECT_EQ(cuda::cublas_dense(*h, a).code(), ErrorCode::kInvalidArgument) << "rows wider than a part";
  a.part_stride = 64, a.out_stride = 128;
  // lo starting inside hi (x_lo below the reduction length), at the matching row stride.
  a.x_lo = int64_t{s.kblocks} * 32 - 8, a.x_stride = 2 * a.x_lo;
  EXPECT_EQ(cuda::cublas_dense(*h, a).code(), ErrorCode::kInvalidArgument) << "hi and lo halves overlap";
  a.x_lo = s.kp;
  a.x_stride = 2 * s.kp + 8;
  EXPECT_EQ(cuda::cublas_dense(*h, a).code(), ErrorCode::kInvalidArgument) << "halves not at one stride";
  CUDA_ASSERT(cudaDeviceSynchronize());
}

INSTANTIATE_TEST_SUITE_P(Shapes, CublasDenseTest,
                         ::testing::Values(DenseCase{5120, 2880, 300}, DenseCase{2880, 4096, 257},
                                           DenseCase{5120, 2880, 2048}, DenseCase{64, 64, 1}, DenseCase{100, 96, 7},
                                           DenseCase{17, 32, 130}, DenseCase{3001, 2880, 1}, DenseCase{1000, 1056, 65}),
                         dense_case_name);

// ---------------------------------------------------------------------------------------------
// The decode GEMV for ≤ 4 columns (qkv and o projections at decode): against float64 and the CPU
// op, and each column's bits independent of the other columns.
class DenseGemvTest : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseGemvTest, MatchesFloat64AndCpuAndIsBatchInvariant) {
  const DenseCase c = GetParam();
  const DenseOnDevice d(c, 3000 + c.rows * 5 + c.cols + c.n);
  const DenseSetup& s = d.s;
  const size_t part = static_cast<size_t>(c.n) * c.rows;
  DevArray<float> gv(s.nseg * part), one(static_cast<size_t>(s.nseg) * c.rows);
  gv.fill_bytes(0xff);  // NaN poison: every partial must be written
  GemmArgs a = dense_args(s, c, d.w.get(), d.x.get(), c.n, gv.get());
  a.mode = GemmOut::kPartial;
  CUDA_ASSERT(cuda::dense_gemv_launch(a, test_launch()));
  const std::vector<float> yv = gv.download();
  CUDA_ASSERT(cudaGetLastError());

  std::vector<float> sum_v(part);
  for (size_t i = 0; i < part; ++i) {
    float v = yv[i];
    for (int sg = 1; sg < s.nseg; ++sg) v += yv[sg * part + i];
    sum_v[i] = v;
  }
  for (int t = 0; t < c.n; ++t) expect_dense_row(s, c, t, &sum_v[static_cast<size_t>(t) * c.rows]);

  // Every column alone gives the same bits as in the batch.
  for (int t = 0; t < c.n; ++t) {
    one.fill_bytes(0xff);
    GemmArgs b = dense_args(s, c, d.w.get(), d.x.get() + static_cast<size_t>(t) * 2 * s.kp, 1, one.get());
    b.mode = GemmOut::kPartial;
    CUDA_ASSERT(cuda::dense_gemv_launch(b, test_launch()));
    const std::vector<float> y1 = one.download();
    for (int sg = 0; sg < s.nseg; ++sg)
      for (int r = 0; r < c.rows; ++r)
        ASSERT_TRUE(
            same_bits(y1[static_cast<size_t>(sg) * c.rows + r], yv[sg * part + static_cast<size_t>(t) * c.rows + r]))
            << "column " << t << " segment " << sg << " row " << r << " depends on the batch";
  }
  // One segment: the plain-store mode writes the same values.
  if (s.nseg == 1) {
    DevArray<float> st(part);
    st.fill_bytes(0xff);
    a.mode = GemmOut::kStore;
    a.out = st.get();
    CUDA_ASSERT(cuda::dense_gemv_launch(a, test_launch()));
    const std::vector<float> ys = st.download();
    for (size_t i = 0; i < part; ++i) ASSERT_TRUE(same_bits(ys[i], yv[i])) << "store mode differs at " << i;
  }
}

TEST(DenseGemv, RejectsWhatItCannotDo) {
  DenseSetup s = make_dense(DenseCase{64, 64, 5}, 7);
  DevArray<uint16_t> w(static_cast<size_t>(s.rows_p) * s.kp), x(static_cast<size_t>(5) * 2 * s.kp);
  DevArray<float> out(static_cast<size_t>(5) * 64);
  GemmArgs a = dense_args(s, DenseCase{64, 64, 5}, w.get(), x.get(), 5, out.get());
  EXPECT_EQ(cuda::dense_gemv_launch(a, test_launch()), cudaErrorInvalidValue) << "5 columns";
  a.n = 4;
  a.weights = GemmWeights::kMxfp4;
  EXPECT_EQ(cuda::dense_gemv_launch(a, test_launch()), cudaErrorInvalidValue) << "MXFP4 weights";
  a.weights = GemmWeights::kF16;
  a.seg_blocks = 20;
  a.nseg = 1;
  EXPECT_EQ(cuda::dense_gemv_launch(a, test_launch()), cudaErrorInvalidValue) << "segments over 16 blocks";
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseGemvTest,
                         ::testing::Values(DenseCase{5120, 2880, 1}, DenseCase{2880, 4096, 1}, DenseCase{5120, 2880, 4},
                                           DenseCase{2880, 4096, 3}, DenseCase{64, 64, 1}, DenseCase{100, 96, 4},
                                           DenseCase{17, 32, 2}, DenseCase{130, 160, 3}, DenseCase{3001, 2000, 2},
                                           DenseCase{1000, 1056, 4}),
                         dense_case_name);

// ---------------------------------------------------------------------------------------------
struct MoeCase {
  int experts, top_k, tokens, hidden, inter;
};

std::string moe_case_name(const MoeCase& c) {
  return "e" + std::to_string(c.experts) + "k" + std::to_string(c.top_k) + "_t" + std::to_string(c.tokens) + "_h" +
         std::to_string(c.hidden) + "_i" + std::to_string(c.inter);
}

class MoeGemmTest : public ::testing::TestWithParam<MoeCase> {};

// Decoded value·2^-14 of element k (0-7) of a device code word, as the kernels cut it out.
float device_code_value(uint32_t w, int k) {
  const uint32_t h2 = k % 4 == 0   ? cuda::mxfp4_pair_x2m14<0>(w)
                      : k % 4 == 1 ? cuda::mxfp4_pair_x2m14<1>(w)
                      : k % 4 == 2 ? cuda::mxfp4_pair_x2m14<2>(w)
                                   : cuda::mxfp4_pair_x2m14<3>(w);
  return f16_to_f32(static_cast<uint16_t>(h2 >> (16 * (k / 4))));
}

// The device layout of MXFP4 experts (CPU only): the tiles filled from checkpoint rows, read back
// through mxfp4_code_offset / mxfp4_scale_offset and the kernels' half2 decode, give every
// checkpoint value (times 2^-14) and scale, zeros in the padding, and every byte exactly once.
// Checkpoint blocks [experts·rows][nb][16] and scales [experts·rows][nb] in the device layout (codes
// [experts][rows_p][kblocks·16 bytes], scales [experts][rows_p][kblocks]), tile by tile through the
// host functions the weight upload uses.
void to_device_layout(const uint8_t* blocks, const uint8_t* scales, int experts, int rows, int nb, int rows_p,
                      int kblocks, uint8_t* codes, uint8_t* dev_scales) {
  for (int e = 0; e < experts; ++e)
    for (int r0 = 0; r0 < rows_p; r0 += cuda::kMxfp4TileRows) {
      const int nrows = std::clamp(rows - r0, 0, cuda::kMxfp4TileRows);
      const size_t src = static_cast<size_t>(e) * rows + std::min(r0, rows), dst = static_cast<size_t>(e) * rows_p + r0;
      cuda::mxfp4_tile_codes(blocks + src * nb * 16, nrows, nb, kblocks, codes + dst * kblocks * 16);
      cuda::mxfp4_tile_scales(scales + src * nb, nrows, nb, kblocks, dev_scales + dst * kblocks);
    }
}

TEST(Mxfp4DeviceLayout, TilesDecodeToTheCheckpointValues) {
  struct Shape {
    int rows, nb;
  };
  for (const Shape sh : {Shape{5760, 90}, Shape{37, 7}, Shape{16, 1}, Shape{70, 12}}) {
    const int rows_p = static_cast<int>(cuda::round_up(sh.rows, cuda::kMxfp4TileRows));
    const int kblocks = static_cast<int>(cuda::round_up(sh.nb, 4));
    const std::vector<uint8_t> blocks = random_bytes(static_cast<size_t>(sh.rows) * sh.nb * 16, 77 + sh.rows);
    const std::vector<uint8_t> scales = random_bytes(static_cast<size_t>(sh.rows) * sh.nb, 78 + sh.rows);
    std::vector<uint8_t> codes(static_cast<size_t>(rows_p) * kblocks * 16, 0xAB);
    std::vector<uint8_t> dev_scales(static_cast<size_t>(rows_p) * kblocks, 0xAB);
    to_device_layout(blocks.data(), scales.data(), 1, sh.rows, sh.nb, rows_p, kblocks, codes.data(), dev_scales.data());
    std::vector<int> code_hits(codes.size(), 0), scale_hits(dev_scales.size(), 0);
    for (int r = 0; r < rows_p; ++r)
      for (int kb = 0; kb < kblocks; ++kb) {
        const bool real = r < sh.rows && kb < sh.nb;
        const size_t so = static_cast<size_t>(cuda::mxfp4_scale_offset(r, kb, kblocks));
        ASSERT_LT(so, dev_scales.size());
        ++scale_hits[so];
        ASSERT_EQ(dev_scales[so], real ? scales[static_cast<size_t>(r) * sh.nb + kb] : 0)
            << "row " << r << " block " << kb;
        for (int t = 0; t < 4; ++t) {
          const size_t wo = static_cast<size_t>(cuda::mxfp4_code_offset(r, kb / 4, kblocks)) + 16 * t + 4 * (kb % 4);
          ASSERT_LE(wo + 4, codes.size());
          uint32_t w;
          std::memcpy(&w, codes.data() + wo, 4);
          for (int i = 0; i < 4; ++i) ++code_hits[wo + i];
          for (int k = 0; k < 8; ++k) {
            const int j = 8 * t + k;  // element of the block
            const float want =
                real ? kFp4Values[(blocks[(static_cast<size_t>(r) * sh.nb + kb) * 16 + j / 2] >> (4 * (j % 2))) & 0xF]
                     : 0.0f;
            const float got = device_code_value(w, k);
            ASSERT_EQ(got, std::ldexp(want, -14)) << "row " << r << " block " << kb << " element " << j;
            ASSERT_EQ(std::signbit(got), std::signbit(want)) << "row " << r << " block " << kb << " element " << j;
          }
        }
      }
    for (size_t i = 0; i < codes.size(); ++i) ASSERT_EQ(code_hits[i], 1) << "code byte " << i;
    for (size_t i = 0; i < dev_scales.size(); ++i) ASSERT_EQ(scale_hits[i], 1) << "scale byte " << i;
  }
}

// Random gate/up experts in checkpoint layout plus the device copy padded to kRowTile rows and an
// even block count.
struct MoeSetup {
  int rows, rows_p, nb, kblocks, seg, nseg, nt, max_tiles, pairs;
  std::vector<uint8_t> blocks, scales;          // checkpoint layout
  std::vector<uint8_t> dev_blocks, dev_scales;  // device layout
  std::vector<uint16_t> bias;                   // bf16 [E][rows]
  std::vector<float> bias_dev;                  // f32 [E][rows_p]
  std::vector<float> x;                         // [tokens][hidden]
  std::vector<int32_t> idx;                     // [tokens][top_k]
};

MoeSetup make_moe(const MoeCase& c, uint64_t seed) {
  MoeSetup s;
  s.rows = 2 * c.inter;
  s.rows_p = static_cast<int>(cuda::round_up(s.rows, cuda::kRowTile));
  s.nb = c.hidden / 32;
  s.kblocks = static_cast<int>(cuda::round_up(s.nb, 4));
  cuda::gemm_segments(s.kblocks, &s.seg, &s.nseg);
  s.pairs = c.tokens * c.top_k;
  s.nt = cuda::gemm_tile_cols((s.pairs + c.experts - 1) / c.experts);
  s.max_tiles = cuda::moe_max_tiles(s.pairs, c.experts, s.nt);
  const size_t rows_all = static_cast<size_t>(c.experts) * s.rows;
  uint64_t st = seed;
  auto next = [&st]() {
    st = st * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<uint32_t>(st >> 33);
  };
  s.blocks.resize(rows_all * s.nb * 16);
  for (uint8_t& b : s.blocks) b = static_cast<uint8_t>(next());
  s.scales.resize(rows_all * s.nb);
  for (uint8_t& b : s.scales) b = static_cast<uint8_t>(118 + next() % 8);  // 2^-9 .. 2^-2
  s.bias = random_bf16(rows_all, seed + 5, 0.5f);
  s.dev_blocks.assign(static_cast<size_t>(c.experts) * s.rows_p * s.kblocks * 16, 0);
  s.dev_scales.assign(static_cast<size_t>(c.experts) * s.rows_p * s.kblocks, 0);
  s.bias_dev.assign(static_cast<size_t>(c.experts) * s.rows_p, 0.0f);
  to_device_layout(s.blocks.data(), s.scales.data(), c.experts, s.rows, s.nb, s.rows_p, s.kblocks, s.dev_blocks.data(),
                   s.dev_scales.data());
  for (int e = 0; e < c.experts; ++e)
    for (int r = 0; r < s.rows; ++r)
      s.bias_dev[static_cast<size_t>(e) * s.rows_p + r] = bf16_to_f32(s.bias[static_cast<size_t>(e) * s.rows + r]);
  s.x = random_f32(static_cast<size_t>(c.tokens) * c.hidden, seed + 9, 2.0f);
  s.idx.resize(static_cast<size_t>(s.pairs));
  std::vector<int32_t> perm(static_cast<size_t>(c.experts));
  for (int t = 0; t < c.tokens; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int i = c.experts - 1; i > 0; --i) std::swap(perm[static_cast<size_t>(i)], perm[next() % (i + 1)]);
    for (int k = 0; k < c.top_k; ++k) s.idx[static_cast<size_t>(t) * c.top_k + k] = perm[static_cast<size_t>(k)];
  }
  return s;
}

// Device state of one MoE case: weights, activations, routing and the grouped pair lists.
// Checks every (token, expert) pair of an expert product against float64 (y = W·x per row, before the
// bias) and the CPU op, and its SwiGLU activation (bias added, clamped) against cpu::swiglu_clamp;
// act_at(p, j) reads activation j of pair p from the kernel's output layout. With pair_step > 1 only
// every pair_step-th pair and the last one are checked (large cases).
void expect_expert_outputs(const MoeSetup& s, const MoeCase& c, const std::vector<float>& yd,
                           const std::function<float(int, int)>& act_at, int pair_step = 1) {
  std::vector<float> wrow(static_cast<size_t>(c.hidden)), gu(static_cast<size_t>(s.rows)),
      ref_act(static_cast<size_t>(c.inter)), cpu_y(static_cast<size_t>(s.rows));
  for (int p = 0; p < s.pairs; ++p) {
    if (p % pair_step != 0 && p != s.pairs - 1) continue;
    const int t = p / c.top_k, e = s.idx[static_cast<size_t>(p)];
    const float* xr = &s.x[static_cast<size_t>(t) * c.hidden];
    for (int r = 0; r < s.rows; ++r) {
      const size_t row = static_cast<size_t>(e) * s.rows + r;
      mxfp4_dequantize_row(&s.blocks[row * s.nb * 16], &s.scales[row * s.nb], c.hidden, wrow.data());
      double ref = 0, abs_sum = 0;
      for (int k = 0; k < c.hidden; ++k)
        ref += static_cast<double>(wrow[k]) * xr[k], abs_sum += std::fabs(static_cast<double>(wrow[k]) * xr[k]);
      const float got = yd[static_cast<size_t>(p) * s.rows + r];
      ASSERT_NEAR(got, ref, mma_tolerance(c.hidden, abs_sum)) << "pair " << p << " row " << r;
      gu[static_cast<size_t>(r)] = got + bf16_to_f32(s.bias[row]);
    }
    cpu::swiglu_clamp(gu.data(), c.inter, 1.702f, 7.0f, ref_act.data());
    for (int j = 0; j < c.inter; ++j)
      ASSERT_NEAR(act_at(p, j), ref_act[static_cast<size_t>(j)],
                  1e-5 * std::max(1.0f, std::fabs(ref_act[static_cast<size_t>(j)])))
          << "swiglu pair " << p << " j " << j;
    // The CPU op (f32 dequantize + f32 dot products in its canonical order).
    const size_t e0 = static_cast<size_t>(e) * s.rows;
    cpu::mxfp4_matmul(&s.blocks[e0 * s.nb * 16], &s.scales[e0 * s.nb], nullptr, s.rows, c.hidden, xr, 1, cpu_y.data(),
                      nullptr);
    EXPECT_LE(rel_l2(&yd[static_cast<size_t>(p) * s.rows], cpu_y.data(), cpu_y.size()), 1e-5) << "pair " << p;
  }
}

struct MoeDevice {
  DevArray<uint8_t> blocks, scales;
  DevArray<float> bias;
  DevArray<uint16_t> x;
  DevArray<int32_t> idx, sorted_token, sorted_pair, tiles, n_tiles;
  int kp;
  MoeDevice(const MoeSetup& s, const MoeCase& c)
      : blocks(s.dev_blocks),
        scales(s.dev_scales),
        bias(s.bias_dev),
        x(pad_pairs(s.x, c.tokens, c.hidden, static_cast<int>(cuda::round_up(c.hidden, cuda::kActPad)))),
        idx(s.idx),
        sorted_token(static_cast<size_t>(s.pairs)),
        sorted_pair(static_cast<size_t>(s.pairs)),
        tiles(static_cast<size_t>(s.max_tiles) * 4),
        n_tiles(1),
        kp(static_cast<int>(cuda::round_up(c.hidden, cuda::kActPad))) {}
  cuda::MoeGroupOut group(const MoeSetup& s) const {
    return cuda::MoeGroupOut{s.nt, sorted_token.get(), sorted_pair.get(), tiles.get(), n_tiles.get(), s.max_tiles};
  }
  GemmArgs args(const MoeSetup& s) const {
    GemmArgs a;
    a.weights = GemmWeights::kMxfp4;
    cuda::set_mxfp4_experts(a, blocks.get(), scales.get(), s.rows, s.rows_p, s.kblocks);
    a.seg_blocks = s.seg;
    a.nseg = s.nseg;
    a.x = x.get();
    a.x_stride = 2 * kp;
    a.x_lo = kp;
    a.x_gather = sorted_token.get();
    a.tiles = tiles.get();
    a.n_tiles = n_tiles.get();
    a.max_tiles = s.max_tiles;
    return a;
  }
};

TEST_P(MoeGemmTest, GroupingCoversEveryPairOnce) {
  const MoeCase c = GetParam();
  const MoeSetup s = make_moe(c, 77 + c.experts + c.tokens);
  MoeDevice d(s, c);
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts, d.group(s), test_launch()));
  const auto st = d.sorted_token.download(), sp = d.sorted_pair.download(), tl = d.tiles.download();
  const int n_tiles = d.n_tiles.download()[0];
  std::vector<int> seen(static_cast<size_t>(s.pairs), 0);
  int covered = 0, prev_end = 0;
  for (int i = 0; i < n_tiles; ++i) {
    const int e = tl[4 * i], start = tl[4 * i + 1], count = tl[4 * i + 2];
    ASSERT_GE(count, 1);
    ASSERT_LE(count, s.nt);
    ASSERT_EQ(start, prev_end) << "tiles must be contiguous";
    prev_end = start + count;
    for (int j = start; j < start + count; ++j) {
      const int pair = sp[static_cast<size_t>(j)];
      ASSERT_EQ(s.idx[static_cast<size_t>(pair)], e) << "pair " << pair << " in the wrong expert's tile";
      ASSERT_EQ(st[static_cast<size_t>(j)], pair / c.top_k);
      ++seen[static_cast<size_t>(pair)];
      ++covered;
    }
  }
  EXPECT_EQ(covered, s.pairs);
  for (int v : seen) EXPECT_EQ(v, 1);
}

TEST_P(MoeGemmTest, ExpertOutputsMatchReferenceAndSwiglu) {
  const MoeCase c = GetParam();
  const MoeSetup s = make_moe(c, 99 + c.experts * 3 + c.hidden);
  MoeDevice d(s, c);
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts, d.group(s), test_launch()));
  DevArray<float> y(static_cast<size_t>(s.pairs) * s.rows);
  y.fill_bytes(0xff);
  GemmArgs a = d.args(s);
  a.out = y.get();
  a.out_stride = s.rows;
  a.out_scatter = d.sorted_pair.get();
  CUDA_ASSERT(cuda::gemm_launch(a, s.nt, test_launch()));
  const int ip = static_cast<int>(cuda::round_up(c.inter, cuda::kActPad));
  DevArray<uint16_t> act(static_cast<size_t>(s.pairs) * 2 * ip);
  GemmArgs sw = d.args(s);
  sw.mode = GemmOut::kSwiglu;
  sw.out16 = act.get();
  sw.out16_stride = 2 * ip;
  sw.out16_lo = ip;
  sw.out_scatter = d.sorted_pair.get();
  sw.bias = d.bias.get();
  sw.bias_expert_stride = s.rows_p;
  CUDA_ASSERT(cuda::gemm_launch(sw, s.nt, test_launch()));
  const std::vector<float> yd = y.download();
  const std::vector<uint16_t> ad = act.download();

  expect_expert_outputs(s, c, yd, [&](int p, int j) { return pair_value(ad, static_cast<size_t>(p), ip, j); });
}

TEST_P(MoeGemmTest, SplitSwigluAndTokenAloneAreBitIdentical) {
  const MoeCase c = GetParam();
  const MoeSetup s = make_moe(c, 123 + c.tokens * 5 + c.inter);
  MoeDevice d(s, c);
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts, d.group(s), test_launch()));
  const int ip = static_cast<int>(cuda::round_up(c.inter, cuda::kActPad));
  DevArray<uint16_t> fused(static_cast<size_t>(s.pairs) * 2 * ip), split(static_cast<size_t>(s.pairs) * 2 * ip);
  DevArray<float> parts(static_cast<size_t>(s.nseg) * s.pairs * s.rows);
  GemmArgs sw = d.args(s);
  sw.mode = GemmOut::kSwiglu;
  sw.out16 = fused.get();
  sw.out16_stride = 2 * ip;
  sw.out16_lo = ip;
  sw.bias = d.bias.get();
  sw.bias_expert_stride = s.rows_p;
  CUDA_ASSERT(cuda::gemm_launch(sw, s.nt, mma_launch()));
  GemmArgs pa = d.args(s);
  pa.mode = GemmOut::kPartial;
  pa.out = parts.get();
  pa.out_stride = s.rows;
  pa.part_stride = static_cast<int64_t>(s.pairs) * s.rows;
  CUDA_ASSERT(cuda::gemm_launch(pa, s.nt, mma_launch()));
  CUDA_ASSERT(cuda::swiglu_parts_launch(parts.get(), s.nseg, pa.part_stride, s.rows, c.inter, d.tiles.get(),
                                        d.n_tiles.get(), s.max_tiles, d.bias.get(), s.rows_p, 1.702f, 7.0f, split.get(),
                                        2 * ip, ip, test_launch()));
  const auto f = fused.download(), sp = split.download();
  for (size_t i = 0; i < f.size(); ++i) ASSERT_EQ(f[i], sp[i]) << "element " << i;

  // Token 0 routed alone: same bits for its pairs (outputs scattered by pair id).
  DevArray<float> y_all(static_cast<size_t>(s.pairs) * s.rows), y_one(static_cast<size_t>(c.top_k) * s.rows);
  GemmArgs a = d.args(s);
  a.out = y_all.get();
  a.out_stride = s.rows;
  a.out_scatter = d.sorted_pair.get();
  CUDA_ASSERT(cuda::gemm_launch(a, s.nt, mma_launch()));
  const std::vector<float> all = y_all.download();
  const int nt1 = 8, max1 = cuda::moe_max_tiles(c.top_k, c.experts, nt1);
  DevArray<int32_t> st1(static_cast<size_t>(c.top_k)), sp1(static_cast<size_t>(c.top_k)),
      tl1(static_cast<size_t>(max1) * 4), n1(1);
  const cuda::MoeGroupOut g1{nt1, st1.get(), sp1.get(), tl1.get(), n1.get(), max1};
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), 1, c.top_k, c.experts, g1, test_launch()));
  GemmArgs b = d.args(s);
  b.x_gather = st1.get();
  b.tiles = tl1.get();
  b.n_tiles = n1.get();
  b.max_tiles = max1;
  b.out = y_one.get();
  b.out_stride = s.rows;
  b.out_scatter = sp1.get();
  CUDA_ASSERT(cuda::gemm_launch(b, nt1, mma_launch()));
  const std::vector<float> alone = y_one.download();
  for (size_t i = 0; i < alone.size(); ++i) ASSERT_TRUE(same_bits(alone[i], all[i])) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeGemmTest,
                         ::testing::Values(MoeCase{32, 4, 1, 2880, 2880}, MoeCase{32, 4, 64, 2880, 2880},
                                           MoeCase{128, 4, 3, 2880, 2880}, MoeCase{5, 1, 60, 96, 64},
                                           MoeCase{7, 3, 100, 160, 96}, MoeCase{4, 4, 37, 64, 32},
                                           MoeCase{8, 2, 300, 256, 320}, MoeCase{16, 2, 513, 128, 160}),
                         [](const auto& info) { return moe_case_name(info.param); });

// ---------------------------------------------------------------------------------------------
// The decode kernel (moe_decode_launch) in both modes: per (token, expert) pair against float64 and
// the CPU ops (plain products and the fused SwiGLU), a token's pairs launched alone, and the
// grouping's tiles giving the same bits as the pairs for gate/up + SwiGLU and the down product
// over its output.
class MoeDecodeTest : public ::testing::TestWithParam<MoeCase> {};

// Weights of s on the device (activations: MoeDevice's fp16 pairs, or `x` with `half` per half).
struct DecodeWeights {
  DevArray<uint8_t> blocks, scales;
  explicit DecodeWeights(const MoeSetup& s) : blocks(s.dev_blocks), scales(s.dev_scales) {}
  cuda::MoeDecodeArgs args(const MoeSetup& s, const uint16_t* x, int64_t half) const {
    cuda::MoeDecodeArgs a;
    cuda::set_mxfp4_experts(a, blocks.get(), scales.get(), s.rows, s.rows_p, s.kblocks);
    a.x = x;
    a.x_stride = 2 * half;
    a.x_lo = half;
    return a;
  }
};

void set_swiglu(cuda::MoeDecodeArgs& a, const MoeDevice& d, const MoeSetup& s, uint16_t* act, int ip) {
  a.out16 = act;
  a.out16_stride = 2 * ip;
  a.out16_lo = ip;
  a.bias = d.bias.get();
  a.bias_expert_stride = s.rows_p;
}

TEST_P(MoeDecodeTest, PairsMatchReferenceSwigluAndTokenAlone) {
  const MoeCase c = GetParam();
  const MoeSetup s = make_moe(c, 311 + c.experts * 7 + c.hidden + c.tokens);
  MoeDevice d(s, c);
  const DecodeWeights w(s);
  const int ip = static_cast<int>(cuda::round_up(c.inter, cuda::kActPad));
  DevArray<float> y(static_cast<size_t>(s.pairs) * s.rows);
  DevArray<uint16_t> act(static_cast<size_t>(s.pairs) * 2 * ip);
  y.fill_bytes(0xff);
  act.fill_bytes(0xff);
  cuda::MoeDecodeArgs a = w.args(s, d.x.get(), d.kp);
  a.experts = d.idx.get();
  a.pairs = s.pairs;
  a.x_row_div = c.top_k;
  cuda::MoeDecodeArgs sw = a;
  a.out = y.get();
  a.out_stride = s.rows;
  set_swiglu(sw, d, s, act.get(), ip);
  CUDA_ASSERT(cuda::moe_decode_launch(a, test_launch()));
  CUDA_ASSERT(cuda::moe_decode_launch(sw, test_launch()));
  const std::vector<float> yd = y.download();
  const std::vector<uint16_t> ad = act.download();
  CUDA_ASSERT(cudaGetLastError());

  expect_expert_outputs(s, c, yd, [&](int p, int j) { return pair_value(ad, static_cast<size_t>(p), ip, j); });

  // Token 0's pairs launched alone: the same bits.
  DevArray<float> one(static_cast<size_t>(c.top_k) * s.rows);
  one.fill_bytes(0xff);
  a.pairs = c.top_k;
  a.out = one.get();
  CUDA_ASSERT(cuda::moe_decode_launch(a, test_launch()));
  const std::vector<float> od = one.download();
  for (size_t i = 0; i < od.size(); ++i) ASSERT_TRUE(same_bits(od[i], yd[i])) << "element " << i;
}

TEST_P(MoeDecodeTest, GroupedTilesGiveThePairBits) {
  const MoeCase c = GetParam();
  const MoeSetup s = make_moe(c, 517 + c.experts * 5 + c.inter + c.tokens);
  MoeDevice d(s, c);
  const DecodeWeights w(s);
  const int ip = static_cast<int>(cuda::round_up(c.inter, cuda::kActPad));
  const int nt = cuda::kMoeDecodeTileTokens, max_tiles = cuda::moe_max_tiles(s.pairs, c.experts, nt);
  DevArray<int32_t> st(static_cast<size_t>(s.pairs)), sp(static_cast<size_t>(s.pairs)),
      tiles(static_cast<size_t>(max_tiles) * 4), n_tiles(1);
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts,
                                     cuda::MoeGroupOut{nt, st.get(), sp.get(), tiles.get(), n_tiles.get(), max_tiles},
                                     test_launch()));
  auto pairs_mode = [&](cuda::MoeDecodeArgs a, int x_row_div) {
    a.experts = d.idx.get();
    a.pairs = s.pairs;
    a.x_row_div = x_row_div;
    return a;
  };
  auto tiles_mode = [&](cuda::MoeDecodeArgs a, const int32_t* x_gather, const int32_t* out_scatter) {
    a.tiles = tiles.get();
    a.n_tiles = n_tiles.get();
    a.max_tiles = max_tiles;
    a.x_gather = x_gather;
    a.out_scatter = out_scatter;
    return a;
  };

  // Plain products, outputs scattered back to pair rows.
  const size_t ny = static_cast<size_t>(s.pairs) * s.rows;
  DevArray<float> yp(ny), yg(ny);
  yg.fill_bytes(0xff);
  cuda::MoeDecodeArgs a = w.args(s, d.x.get(), d.kp);
  a.out_stride = s.rows;
  a.out = yp.get();
  CUDA_ASSERT(cuda::moe_decode_launch(pairs_mode(a, c.top_k), test_launch()));
  a.out = yg.get();
  CUDA_ASSERT(cuda::moe_decode_launch(tiles_mode(a, st.get(), sp.get()), test_launch()));
  const std::vector<float> vp = yp.download(), vg = yg.download();
  for (size_t i = 0; i < ny; ++i) ASSERT_TRUE(same_bits(vg[i], vp[i])) << "plain element " << i;

  // gate/up + SwiGLU: pair rows vs sorted rows (the padding of the activation rows stays zero).
  DevArray<uint16_t> ap(static_cast<size_t>(s.pairs) * 2 * ip), ag(static_cast<size_t>(s.pairs) * 2 * ip);
  cuda::MoeDecodeArgs g = w.args(s, d.x.get(), d.kp);
  set_swiglu(g, d, s, ap.get(), ip);
  CUDA_ASSERT(cuda::moe_decode_launch(pairs_mode(g, c.top_k), test_launch()));
  g.out16 = ag.get();
  CUDA_ASSERT(cuda::moe_decode_launch(tiles_mode(g, st.get(), nullptr), test_launch()));
  const std::vector<uint16_t> hp = ap.download(), hg = ag.download();
  const std::vector<int32_t> order = sp.download();
  for (int i = 0; i < s.pairs; ++i) {
    const size_t p = static_cast<size_t>(order[static_cast<size_t>(i)]);
    for (int j = 0; j < c.inter; ++j) {
      const size_t at = static_cast<size_t>(cuda::k_phys(j));
      ASSERT_EQ(hg[static_cast<size_t>(i) * 2 * ip + at], hp[p * 2 * ip + at]) << "hi, sorted " << i << " j " << j;
      ASSERT_EQ(hg[static_cast<size_t>(i) * 2 * ip + ip + at], hp[p * 2 * ip + ip + at])
          << "lo, sorted " << i << " j " << j;
    }
  }

  // Down product over those activations (reduction = inter, which must be whole blocks of 32):
  // pairs read their own rows, tiles the sorted rows; against float64 over the pair activations.
  if (c.inter % 32 != 0) return;
  const MoeSetup s2 = make_moe(MoeCase{c.experts, c.top_k, c.tokens, c.inter, c.hidden / 2 + 4}, 919 + c.inter);
  const DecodeWeights w2(s2);
  const size_t n2 = static_cast<size_t>(s.pairs) * s2.rows;
  DevArray<float> zp(n2), zg(n2);
  zp.fill_bytes(0xff);
  zg.fill_bytes(0xff);
  cuda::MoeDecodeArgs dp = w2.args(s2, ap.get(), ip), dg = w2.args(s2, ag.get(), ip);
  dp.out = zp.get(), dg.out = zg.get();
  dp.out_stride = dg.out_stride = s2.rows;
  CUDA_ASSERT(cuda::moe_decode_launch(pairs_mode(dp, 1), test_launch()));
  CUDA_ASSERT(cuda::moe_decode_launch(tiles_mode(dg, nullptr, sp.get()), test_launch()));
  const std::vector<float> up = zp.download(), ug = zg.download();
  for (size_t i = 0; i < n2; ++i) ASSERT_TRUE(same_bits(ug[i], up[i])) << "down element " << i;
  std::vector<float> wrow(static_cast<size_t>(c.inter));
  for (int p = 0; p < s.pairs; ++p) {
    const size_t e = static_cast<size_t>(s.idx[static_cast<size_t>(p)]);
    for (int r = 0; r < s2.rows; ++r) {
      const size_t row = e * s2.rows + r;
      mxfp4_dequantize_row(&s2.blocks[row * s2.nb * 16], &s2.scales[row * s2.nb], c.inter, wrow.data());
      double ref = 0, abs_sum = 0;
      for (int k = 0; k < c.inter; ++k) {
        const double v =
            static_cast<double>(wrow[static_cast<size_t>(k)]) * pair_value(hp, static_cast<size_t>(p), ip, k);
        ref += v, abs_sum += std::fabs(v);
      }
      ASSERT_NEAR(up[static_cast<size_t>(p) * s2.rows + r], ref, mma_tolerance(c.inter, abs_sum))
          << "down pair " << p << " row " << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeDecodeTest,
                         ::testing::Values(MoeCase{32, 4, 1, 2880, 2880}, MoeCase{32, 4, 1, 2880, 1440},
                                           MoeCase{32, 4, 64, 2880, 2880}, MoeCase{128, 4, 3, 2880, 2880},
                                           MoeCase{7, 3, 5, 160, 96}, MoeCase{4, 4, 37, 64, 32},
                                           MoeCase{4, 4, 2, 64, 40}, MoeCase{5, 2, 3, 96, 36},
                                           MoeCase{6, 1, 2, 4160, 72}, MoeCase{8, 2, 70, 4160, 128}),
                         [](const auto& info) { return moe_case_name(info.param); });

// ---------------------------------------------------------------------------------------------
// The tiled GEMM for wide column tiles (gemm_tiled_launch, 64- and 128-row blocks): bit for bit the
// results of gemm_kernel (gemm_launch with 8-column tiles, which the tests above check in full), on
// gpt-oss prefill shapes and awkward ones, and against float64 and the CPU ops on sampled columns.
class TiledDenseGemmTest : public ::testing::TestWithParam<DenseCase> {};

TEST_P(TiledDenseGemmTest, SameBitsAsGemmKernelAndMatchesFloat64) {
  const DenseCase c = GetParam();
  const DenseOnDevice d(c, 4000 + c.rows * 3 + c.cols + c.n);
  const DenseSetup& s = d.s;
  const size_t size = static_cast<size_t>(c.n) * c.rows;
  DevArray<float> ref(size), out(size);
  GemmArgs a = dense_args(s, c, d.w.get(), d.x.get(), c.n, ref.get());
  CUDA_ASSERT(cuda::gemm_launch(a, 8, test_launch()));
  const std::vector<float> yr = ref.download();
  a.out = out.get();
  for (int mt = 0; mt <= 2; ++mt) {
    out.fill_bytes(0xff);  // NaN poison: every output must be written
    // mt 0: whatever gemm_launch picks for 64-column tiles.
    CUDA_ASSERT(mt == 0 ? cuda::gemm_launch(a, 64, test_launch()) : cuda::gemm_tiled_launch(a, mt, test_launch()));
    const std::vector<float> y = out.download();
    CUDA_ASSERT(cudaGetLastError());
    for (size_t i = 0; i < size; ++i)
      ASSERT_TRUE(same_bits(y[i], yr[i]))
          << "mt " << mt << " token " << i / c.rows << " row " << i % c.rows << ": " << y[i] << " vs " << yr[i];
  }
  // Sampled tokens against float64 and the CPU op.
  const int step = std::max(1, c.n / 16);
  std::vector<int> tokens;
  for (int t = 0; t < c.n; t += step) tokens.push_back(t);
  if (tokens.back() != c.n - 1) tokens.push_back(c.n - 1);
  for (int t : tokens) expect_dense_row(s, c, t, &yr[static_cast<size_t>(t) * c.rows]);
}

TEST(TiledGemm, RejectsWhatItCannotDo) {
  DenseSetup s = make_dense(DenseCase{64, 64, 64}, 11);
  DevArray<uint16_t> w(static_cast<size_t>(s.rows_p) * s.kp), x(static_cast<size_t>(64) * 2 * s.kp);
  DevArray<float> out(static_cast<size_t>(64) * 64);
  GemmArgs a = dense_args(s, DenseCase{64, 64, 64}, w.get(), x.get(), 64, out.get());
  EXPECT_EQ(cuda::gemm_tiled_launch(a, 3, test_launch()), cudaErrorInvalidValue) << "mt 3";
  a.mode = GemmOut::kPartial;
  EXPECT_EQ(cuda::gemm_tiled_launch(a, 1, test_launch()), cudaErrorInvalidValue) << "split partials";
  EXPECT_EQ(cuda::gemm_tiled_mt(a), 0) << "split partials";
  a.mode = GemmOut::kSwiglu;
  EXPECT_EQ(cuda::gemm_tiled_launch(a, 1, test_launch()), cudaErrorInvalidValue) << "dense SwiGLU";
  a.mode = GemmOut::kStore;
  a.kblocks = 3;
  a.seg_blocks = 4;
  EXPECT_EQ(cuda::gemm_tiled_launch(a, 1, test_launch()), cudaErrorInvalidValue) << "odd dense kblocks";
}

INSTANTIATE_TEST_SUITE_P(Shapes, TiledDenseGemmTest,
                         ::testing::Values(DenseCase{5120, 2880, 2048}, DenseCase{2880, 4096, 2048},
                                           DenseCase{100, 96, 70}, DenseCase{300, 160, 130}, DenseCase{1000, 2880, 65},
                                           DenseCase{17, 64, 64}, DenseCase{2880, 2880, 200}),
                         dense_case_name);

struct TiledMoeCase {
  MoeCase c;
  bool skew;  // every token routed to expert 0 (among its top-k): one full expert, the others sparse
};

class TiledMoeGemmTest : public ::testing::TestWithParam<TiledMoeCase> {};

// Pair lists and tiles of the grouping with column tile nt.
struct Grouping {
  int nt, max_tiles;
  DevArray<int32_t> sorted_token, sorted_pair, tiles, n_tiles;
  Grouping(int nt_, const MoeSetup& s, const MoeCase& c)
      : nt(nt_),
        max_tiles(cuda::moe_max_tiles(s.pairs, c.experts, nt_)),
        sorted_token(static_cast<size_t>(s.pairs)),
        sorted_pair(static_cast<size_t>(s.pairs)),
        tiles(static_cast<size_t>(max_tiles) * 4),
        n_tiles(1) {}
  cuda::MoeGroupOut out() const {
    return cuda::MoeGroupOut{nt, sorted_token.get(), sorted_pair.get(), tiles.get(), n_tiles.get(), max_tiles};
  }
  void apply(GemmArgs& a) const {
    a.x_gather = sorted_token.get();
    a.tiles = tiles.get();
    a.n_tiles = n_tiles.get();
    a.max_tiles = max_tiles;
    a.out_scatter = sorted_pair.get();
  }
};

// The case's experts, with every token routed to expert 0 among its top-k when `skew` (one full
// expert, the others sparse).
MoeSetup make_moe_routed(const TiledMoeCase& tc, uint64_t seed) {
  const MoeCase& c = tc.c;
  MoeSetup s = make_moe(c, seed);
  if (tc.skew)
    for (int t = 0; t < c.tokens; ++t) {
      int32_t* e = &s.idx[static_cast<size_t>(t) * c.top_k];
      if (std::find(e, e + c.top_k, 0) == e + c.top_k) e[0] = 0;
    }
  return s;
}

// Gate/up arguments over d and the tiles of g: st stores the f32 rows (s.rows apart), sw the
// SwiGLU activations as fp16 pairs (inter values padded to ip, hi then lo); outputs left unset.
struct GateUpArgs {
  int ip;
  GemmArgs st, sw;
  GateUpArgs(const MoeDevice& d, const MoeSetup& s, const MoeCase& c, const Grouping& g)
      : ip(static_cast<int>(cuda::round_up(c.inter, cuda::kActPad))), st(d.args(s)), sw(d.args(s)) {
    st.out_stride = s.rows;
    sw.mode = GemmOut::kSwiglu;
    sw.out16_stride = 2 * ip;
    sw.out16_lo = ip;
    sw.bias = d.bias.get();
    sw.bias_expert_stride = s.rows_p;
    g.apply(st);
    g.apply(sw);
  }
};

TEST_P(TiledMoeGemmTest, SameBitsAsGemmKernelAndMatchesReference) {
  const MoeCase c = GetParam().c;
  const MoeSetup s = make_moe_routed(GetParam(), 555 + c.experts * 11 + c.tokens + c.inter);
  MoeDevice d(s, c);
  Grouping g8(8, s, c), g64(64, s, c);
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts, g8.out(), test_launch()));
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts, g64.out(), test_launch()));
  GateUpArgs args(d, s, c, g8);
  GemmArgs &st = args.st, &sw = args.sw;
  const int ip = args.ip;
  const size_t ysize = static_cast<size_t>(s.pairs) * s.rows, asize = static_cast<size_t>(s.pairs) * 2 * ip;
  DevArray<float> y_ref(ysize), y(ysize);
  DevArray<uint16_t> act_ref(asize), act(asize);
  act_ref.fill_bytes(0xff);  // NaN poison here and below: the padding past inter stays poison in both
  st.out = y_ref.get();
  sw.out16 = act_ref.get();
  CUDA_ASSERT(cuda::gemm_launch(st, 8, test_launch()));
  CUDA_ASSERT(cuda::gemm_launch(sw, 8, test_launch()));
  const std::vector<float> yr = y_ref.download();
  const std::vector<uint16_t> ar = act_ref.download();

  g64.apply(st);
  g64.apply(sw);
  st.out = y.get();
  sw.out16 = act.get();
  for (int mt = 0; mt <= 2; ++mt) {
    y.fill_bytes(0xff);
    act.fill_bytes(0xff);
    // mt 0: whatever gemm_launch picks for 64-column tiles among the mma.sync kernels.
    CUDA_ASSERT(mt == 0 ? cuda::gemm_launch(st, 64, mma_launch()) : cuda::gemm_tiled_launch(st, mt, test_launch()));
    CUDA_ASSERT(mt == 0 ? cuda::gemm_launch(sw, 64, mma_launch()) : cuda::gemm_tiled_launch(sw, mt, test_launch()));
    const std::vector<float> yd = y.download();
    const std::vector<uint16_t> ad = act.download();
    CUDA_ASSERT(cudaGetLastError());
    for (size_t i = 0; i < ysize; ++i)
      ASSERT_TRUE(same_bits(yd[i], yr[i]))
          << "mt " << mt << " pair " << i / s.rows << " row " << i % s.rows << ": " << yd[i] << " vs " << yr[i];
    for (size_t i = 0; i < asize; ++i)
      ASSERT_EQ(ad[i], ar[i]) << "mt " << mt << " SwiGLU pair " << i / (2 * ip) << " element " << i % (2 * ip);
  }
  expect_expert_outputs(
      s, c, yr, [&](int p, int j) { return pair_value(ar, static_cast<size_t>(p), ip, j); }, std::max(1, s.pairs / 24));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, TiledMoeGemmTest,
    ::testing::Values(TiledMoeCase{{32, 4, 2048, 2880, 2880}, false}, TiledMoeCase{{128, 4, 2048, 2880, 1440}, false},
                      TiledMoeCase{{32, 4, 600, 2880, 2880}, true}, TiledMoeCase{{8, 2, 300, 256, 100}, false},
                      TiledMoeCase{{1, 1, 300, 160, 96}, false}, TiledMoeCase{{16, 4, 200, 128, 72}, true}),
    [](const auto& info) { return moe_case_name(info.param.c) + (info.param.skew ? "_skew" : ""); });

// ---------------------------------------------------------------------------------------------
// The warpgroup MMA expert kernel (moe_wgmma_launch, sm_90a): every (token, expert) pair of gate/up
// and of its SwiGLU output against float64 and the CPU ops, the same bits on a second run, every
// output written (NaN poison), and gemm_launch choosing it for 64-column tiles. Its bits differ from
// the mma.sync kernels' (one accumulator over the whole reduction), within the same error bound.
class MoeWgmmaTest : public ::testing::TestWithParam<TiledMoeCase> {};

TEST_P(MoeWgmmaTest, MatchesReferenceAndRepeatsItsBits) {
  const MoeCase c = GetParam().c;
  const MoeSetup s = make_moe_routed(GetParam(), 4321 + c.experts * 7 + c.tokens + c.inter);
  MoeDevice d(s, c);
  Grouping g64(64, s, c);
  CUDA_ASSERT(cuda::moe_group_launch(d.idx.get(), c.tokens, c.top_k, c.experts, g64.out(), test_launch()));
  GateUpArgs args(d, s, c, g64);
  GemmArgs &st = args.st, &sw = args.sw;
  const int ip = args.ip;
  const size_t ysize = static_cast<size_t>(s.pairs) * s.rows, asize = static_cast<size_t>(s.pairs) * 2 * ip;
  const cuda::Launch ln = test_launch();
  int dev = 0, major = 0;
  CUDA_ASSERT(cudaGetDevice(&dev));
  CUDA_ASSERT(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  // Hopper running this binary's sm_90 code (not a compute_80-only build) has the kernel.
  if (major == 9 && ln.pdl) {
    ASSERT_TRUE(ln.wgmma) << "the sm_90a image on a Hopper device";
  }
  if (!ln.wgmma) {  // a device without the sm_90a image: the kernel refuses, gemm_launch never picks it
    EXPECT_FALSE(cuda::moe_wgmma_fits(st, ln));
    EXPECT_EQ(cuda::moe_wgmma_launch(st, ln), cudaErrorInvalidValue);
    return;
  }
  ASSERT_TRUE(cuda::moe_wgmma_fits(st, ln));
  ASSERT_TRUE(cuda::moe_wgmma_fits(sw, ln));
  std::vector<float> y[2];
  std::vector<uint16_t> act[2];
  for (int run = 0; run < 2; ++run) {
    DevArray<float> yd(ysize);
    DevArray<uint16_t> ad(asize);
    yd.fill_bytes(0xff);  // NaN poison: every output must be written
    ad.fill_bytes(0x00);  // the padding past inter must stay as it was
    st.out = yd.get();
    sw.out16 = ad.get();
    // Run 0 through gemm_launch (which must pick this kernel), run 1 directly.
    CUDA_ASSERT(run == 0 ? cuda::gemm_launch(st, 64, ln) : cuda::moe_wgmma_launch(st, ln));
    CUDA_ASSERT(run == 0 ? cuda::gemm_launch(sw, 64, ln) : cuda::moe_wgmma_launch(sw, ln));
    CUDA_ASSERT(cudaDeviceSynchronize());
    y[run] = yd.download();
    act[run] = ad.download();
  }
  for (size_t i = 0; i < ysize; ++i)
    ASSERT_TRUE(same_bits(y[0][i], y[1][i])) << "pair " << i / s.rows << " row " << i % s.rows;
  ASSERT_EQ(act[0], act[1]);
  std::vector<bool> written(static_cast<size_t>(ip), false);  // storage positions of elements 0..inter-1
  for (int j = 0; j < c.inter; ++j) written[static_cast<size_t>(cuda::k_phys(j))] = true;
  for (size_t i = 0; i < asize; ++i)
    if (!written[i % static_cast<size_t>(ip)]) {
      ASSERT_EQ(act[0][i], 0) << "padding element " << i << " written";
    }
  {
    // Odd output strides (rows that start at odd elements): the epilogue's narrow stores, same bits.
    const int64_t ys = s.rows + 1, as = 2 * ip + 1;
    DevArray<float> yd(static_cast<size_t>(s.pairs) * ys);
    DevArray<uint16_t> ad(static_cast<size_t>(s.pairs) * as);
    GemmArgs st1 = st, sw1 = sw;
    st1.out = yd.get(), st1.out_stride = ys;
    sw1.out16 = ad.get(), sw1.out16_stride = as;
    CUDA_ASSERT(cuda::moe_wgmma_launch(st1, ln));
    CUDA_ASSERT(cuda::moe_wgmma_launch(sw1, ln));
    const std::vector<float> yo = yd.download();
    const std::vector<uint16_t> ao = ad.download();
    for (int p = 0; p < s.pairs; ++p) {
      for (int r = 0; r < s.rows; ++r)
        ASSERT_TRUE(same_bits(yo[static_cast<size_t>(p * ys + r)], y[0][static_cast<size_t>(p) * s.rows + r]))
            << "odd stride: pair " << p << " row " << r;
      for (int i = 0; i < 2 * ip; ++i)
        if (written[static_cast<size_t>(i % ip)]) {
          ASSERT_EQ(ao[static_cast<size_t>(p * as + i)], act[0][static_cast<size_t>(p) * 2 * ip + i])
              << "odd stride: pair " << p << " element " << i;
        }
    }
  }
  // The mma.sync kernel's results differ only by rounding: both are near-f32, but the tensor cores
  // truncate as they accumulate, here over the whole reduction in one accumulator and there in
  // segment sums (H100: 4.4e-6 at K = 2880, 6.7e-6 at K = 4160; a lost lo half would give ~1e-4).
  DevArray<float> ym(ysize);
  st.out = ym.get();
  CUDA_ASSERT(cuda::gemm_launch(st, 64, mma_launch()));
  const std::vector<float> yr = ym.download();
  EXPECT_LE(rel_l2(y[0].data(), yr.data(), ysize), 2e-5);
  expect_expert_outputs(
      s, c, y[0], [&](int p, int j) { return pair_value(act[0], static_cast<size_t>(p), ip, j); },
      std::max(1, s.pairs / 24));
}

TEST(MoeWgmma, RejectsWhatItCannotDo) {
  const MoeCase c{4, 2, 70, 64, 32};
  const MoeSetup s = make_moe(c, 5);
  MoeDevice d(s, c);
  DevArray<float> out(static_cast<size_t>(s.pairs) * s.rows);
  GemmArgs a = d.args(s);
  a.out = out.get();
  a.out_stride = s.rows;
  cuda::Launch ln = test_launch();
  ln.wgmma = true;  // the argument checks come before any launch
  ln.smem_optin = 227 * 1024;
  EXPECT_TRUE(cuda::moe_wgmma_fits(a, ln));
  GemmArgs b = a;
  b.mode = GemmOut::kPartial;
  EXPECT_FALSE(cuda::moe_wgmma_fits(b, ln)) << "split partials";
  EXPECT_EQ(cuda::moe_wgmma_launch(b, ln), cudaErrorInvalidValue) << "split partials";
  b = a;
  b.tiles = nullptr;
  EXPECT_EQ(cuda::moe_wgmma_launch(b, ln), cudaErrorInvalidValue) << "no tiles";
  b = a;
  b.kblocks = 6;
  EXPECT_EQ(cuda::moe_wgmma_launch(b, ln), cudaErrorInvalidValue) << "kblocks not a multiple of 4";
  b = a;
  b.x_lo = 8 * s.kblocks;
  EXPECT_EQ(cuda::moe_wgmma_launch(b, ln), cudaErrorInvalidValue) << "activation halves overlap";
  b = a;
  b.mode = GemmOut::kSwiglu;
  EXPECT_EQ(cuda::moe_wgmma_launch(b, ln), cudaErrorInvalidValue) << "SwiGLU without bias and output";
  b = a;
  b.weights = GemmWeights::kF16;
  EXPECT_FALSE(cuda::moe_wgmma_fits(b, ln)) << "fp16 weights";
  ln.wgmma = false;
  EXPECT_FALSE(cuda::moe_wgmma_fits(a, ln)) << "no sm_90a image";
  EXPECT_EQ(cuda::moe_wgmma_launch(a, ln), cudaErrorInvalidValue) << "no sm_90a image";
  ln.wgmma = true;
  ln.smem_optin = 99 * 1024;
  EXPECT_FALSE(cuda::moe_wgmma_fits(a, ln)) << "too little shared memory";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoeWgmmaTest,
    ::testing::Values(TiledMoeCase{{32, 4, 2048, 2880, 2880}, false}, TiledMoeCase{{128, 4, 2048, 2880, 1440}, false},
                      TiledMoeCase{{32, 4, 600, 2880, 2880}, true}, TiledMoeCase{{8, 2, 300, 256, 100}, false},
                      TiledMoeCase{{1, 1, 300, 160, 96}, false}, TiledMoeCase{{16, 4, 200, 128, 72}, true},
                      TiledMoeCase{{3, 2, 130, 4160, 200}, false}),
    [](const auto& info) { return moe_case_name(info.param.c) + (info.param.skew ? "_skew" : ""); });

}  // namespace
}  // namespace gptoss::testing
