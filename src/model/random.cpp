// Model::random: gpt-oss-shaped random weights in one owned arena, filled in parallel with a fast
// counter-based PRNG (deterministic in the seed, independent of the thread count).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <thread>

#include "core/mxfp4.h"
#include "model/weight_table.h"
#include "model/weights.h"

namespace gptoss {

namespace {

// splitmix64 finaliser: a strong 64-bit mix, used both to derive chunk seeds and as the generator.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : state_(seed) {}
  uint64_t next() { return mix64(state_ += 0x9e3779b97f4a7c15ull); }
  // Approximately standard normal: Irwin–Hall sum of four 16-bit uniforms, rescaled to unit
  // variance (|x| <= 3.46). Good enough for weights and ~10x cheaper than Box–Muller.
  float normal() {
    const uint64_t r = next();
    const float s = static_cast<float>((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48));
    constexpr float kMean = 2.0f * 65535.0f;
    constexpr float kInvStd = 1.7320508f / 65536.0f;  // 1 / (65536 * sqrt(4/12))
    return (s - kMean) * kInvStd;
  }

 private:
  uint64_t state_;
};

// How one tensor is filled (magnitudes follow /work/shared/tools/mkckpt.py).
struct FillSpec {
  enum Kind { kNormal, kBytes, kScales } kind = kNormal;
  float mean = 0.0f, std = 1.0f;
  int scale_base = 127;
};

FillSpec fill_spec(const WeightSlot& slot, const Config& c) {
  const float inv_sqrt_h = 1.0f / std::sqrt(static_cast<float>(c.hidden_size));
  switch (slot.role) {
    case WeightRole::kEmbed: return {FillSpec::kNormal, 0.0f, 1.0f};
    case WeightRole::kLmHead: return {FillSpec::kNormal, 0.0f, c.vocab_size < 200000 ? 0.5f : 2.0f * inv_sqrt_h};
    case WeightRole::kNorm: return {FillSpec::kNormal, 1.0f, 0.1f};
    case WeightRole::kAttnQKV: return {FillSpec::kNormal, 0.0f, 1.5f * inv_sqrt_h};
    case WeightRole::kAttnOut: return {FillSpec::kNormal, 0.0f, 1.0f / std::sqrt(static_cast<float>(slot.shape[1]))};
    case WeightRole::kSinks: return {FillSpec::kNormal, 0.0f, 1.0f};
    case WeightRole::kRouterWeight: return {FillSpec::kNormal, 0.0f, 2.0f * inv_sqrt_h};
    case WeightRole::kRouterBias: return {FillSpec::kNormal, 0.0f, 0.5f};
    case WeightRole::kAttnBias:
    case WeightRole::kExpertBias: return {FillSpec::kNormal, 0.0f, 0.1f};
    case WeightRole::kExpertBlocks: return {FillSpec::kBytes};
    case WeightRole::kExpertScales: {
      // Random E2M1 codes have std ≈ 2.93; pick the E8M0 exponent so code × scale has std ≈ 1/sqrt(fan_in).
      const double fan_in = static_cast<double>(slot.shape[2]) * kMxfp4BlockSize;
      const int e = static_cast<int>(std::lround(std::log2(1.0 / std::sqrt(fan_in) / 2.93)));
      return {FillSpec::kScales, 0.0f, 0.0f, 127 + e};
    }
  }
  return {};
}

// One unit of work: bytes [begin, end) of tensor `slot`.
struct Chunk {
  uint32_t slot;
  size_t begin, end;
};

void fill_chunk(const FillSpec& spec, uint64_t seed, uint8_t* p, size_t nbytes) {
  SplitMix rng(seed);
  switch (spec.kind) {
    case FillSpec::kNormal: {
      uint16_t* out = reinterpret_cast<uint16_t*>(p);
      for (size_t i = 0; i < nbytes / 2; ++i) out[i] = f32_to_bf16(spec.mean + spec.std * rng.normal());
      break;
    }
    case FillSpec::kBytes: {
      size_t i = 0;
      for (; i + 8 <= nbytes; i += 8) {
        const uint64_t r = rng.next();
        std::memcpy(p + i, &r, 8);
      }
      const uint64_t r = rng.next();
      for (size_t k = 0; i < nbytes; ++i, ++k) p[i] = static_cast<uint8_t>(r >> (8 * k));
      break;
    }
    case FillSpec::kScales:
      for (size_t i = 0; i < nbytes; ++i) {
        const int s = spec.scale_base + static_cast<int>(rng.next() % 3) - 1;  // jitter −1, 0, +1
        p[i] = static_cast<uint8_t>(std::clamp(s, 0, 254));
      }
      break;
  }
}

}  // namespace

Result<std::shared_ptr<const Model>> Model::random(const Config& config, uint64_t seed) {
  GPTOSS_RETURN_IF_ERROR(config.validate());
  std::shared_ptr<Model> model(new Model());
  model->config_ = config;
  model->source_ = "random:" + std::to_string(seed);
  const std::vector<WeightSlot> slots = weight_table(model->config_, &model->weights_, CheckpointLayout::kHF);

  // One arena; every tensor starts on a 64-byte boundary (SIMD loads, CUDA staging).
  std::vector<size_t> offsets;
  size_t total = 0;
  for (const WeightSlot& slot : slots) {
    offsets.push_back(total);
    total += (slot.nbytes() + 63) / 64 * 64;
  }
  void* mem = ::operator new (total, std::align_val_t{64}, std::nothrow);
  if (!mem)
    return make_error(ErrorCode::kResourceExhausted, "random model: cannot allocate {:.2f} GiB of weights",
                      static_cast<double>(total) / (1ull << 30));
  std::shared_ptr<uint8_t> arena(static_cast<uint8_t*>(mem),
                                 [](uint8_t* p) { ::operator delete (p, std::align_val_t{64}); });

  // Chunks are a fixed byte size (a multiple of 8, so bf16 chunks hold whole elements) and seeded
  // from (seed, tensor, chunk): the bytes do not depend on how chunks are spread over threads.
  constexpr size_t kChunkBytes = size_t{1} << 20;
  std::vector<Chunk> chunks;
  std::vector<FillSpec> specs;
  for (uint32_t i = 0; i < slots.size(); ++i) {
    specs.push_back(fill_spec(slots[i], model->config_));
    for (size_t b = 0; b < slots[i].nbytes(); b += kChunkBytes)
      chunks.push_back({i, b, std::min(slots[i].nbytes(), b + kChunkBytes)});
    weight_slot_bind(slots[i], arena.get() + offsets[i]);
  }
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t k; (k = next.fetch_add(1)) < chunks.size();) {
      const Chunk& c = chunks[k];
      const uint64_t chunk_seed = mix64(mix64(seed ^ (uint64_t{c.slot} << 40)) + c.begin / kChunkBytes);
      fill_chunk(specs[c.slot], chunk_seed, arena.get() + offsets[c.slot] + c.begin, c.end - c.begin);
    }
  };
  const unsigned n_threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> threads;
  for (unsigned t = 1; t < n_threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  model->storage_ = std::move(arena);
  return std::shared_ptr<const Model>(std::move(model));
}

}  // namespace gptoss
