// The sampling reference (backend/sampling.h) and its shared arithmetic (sampling_math.h): the
// deterministic exponential against std::exp, the order key, the weight scale, the draw position,
// and sample_row's rules derived independently: the kept set of top-k / top-p / min-p (ties by id),
// the draw walking the kept tokens in id order with frequencies equal to the softmax, greedy and
// the NaN / ±inf cases, penalty edits, and the validation messages.
#include "backend/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <vector>

namespace gptoss {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

TEST(SampleExp, MatchesStdExpAndIsExactAtZero) {
  EXPECT_EQ(sample_exp(0.0), 1.0);
  EXPECT_EQ(sample_exp(-0.0), 1.0);
  double worst = 0;
  for (int i = 0; i <= 200000; ++i) {
    const double x = -700.0 * i / 200000.0 - 1e-7 * (i % 7);
    const double ref = std::exp(x);
    worst = std::max(worst, std::abs(sample_exp(x) - ref) / ref);
  }
  EXPECT_LT(worst, 1e-15);
  // Monotone where the weights live (at this resolution).
  double prev = 0;
  for (int i = -500000; i <= 0; ++i) {
    const double v = sample_exp(i * 1e-4);
    ASSERT_GE(v, prev) << i;
    prev = v;
  }
}

TEST(SampleOrderKey, OrdersLikeTheValuesWithSignedZerosEqual) {
  const std::vector<float> v = {-kInf, -3e38f, -2.5f, -1e-30f, -0.0f, 0.0f, 1e-45f, 1.0f, 1.5f, 3e38f, kInf};
  for (size_t i = 0; i + 1 < v.size(); ++i) {
    const uint32_t a = sample_order_key(v[i]), b = sample_order_key(v[i + 1]);
    if (v[i] == v[i + 1]) {
      EXPECT_EQ(a, b) << v[i];
    } else {
      EXPECT_LT(a, b) << v[i] << " vs " << v[i + 1];
    }
    if (!(v[i] == 0.0f && std::signbit(v[i]))) {
      EXPECT_EQ(sample_key_value(a), v[i]);
    }
  }
}

TEST(SampleWeightShift, KeepsEveryRowTotalBelow2To64WithTheLargestScale) {
  for (int64_t vocab :
       {int64_t{1}, int64_t{2}, int64_t{7}, int64_t{1000}, int64_t{131072}, int64_t{201088}, (int64_t{1} << 31) - 1}) {
    const int s = sample_weight_shift(vocab);
    const long double total = static_cast<long double>(vocab) * std::ldexp(1.0L, s);  // every w = 1
    EXPECT_LT(total, std::ldexp(1.0L, 64)) << vocab;
    EXPECT_GE(2 * total, std::ldexp(1.0L, 64)) << vocab << ": a larger scale would still fit";
  }
  EXPECT_EQ(sample_weight_shift(201088), 46);
}

TEST(SampleDrawPosition, IsTheFloorOfMassTimesTheUnitInterval) {
  const uint64_t top = ~uint64_t{0};
  for (uint64_t mass : {uint64_t{1}, uint64_t{3}, uint64_t{1} << 46, top}) {
    EXPECT_EQ(sample_draw_position(mass, 0), 0u);
    EXPECT_EQ(sample_draw_position(mass, top), mass - 1) << mass;
  }
  // mass = 3: the unit interval splits at ⌈2^64 / 3⌉ and ⌈2^65 / 3⌉ (2^64 − 1 is a multiple of 3).
  const uint64_t third = top / 3 + 1, two_thirds = 2 * (top / 3) + 1;
  EXPECT_EQ(sample_draw_position(3, third - 1), 0u);
  EXPECT_EQ(sample_draw_position(3, third), 1u);
  EXPECT_EQ(sample_draw_position(3, two_thirds - 1), 1u);
  EXPECT_EQ(sample_draw_position(3, two_thirds), 2u);
  EXPECT_EQ(sample_draw_position(uint64_t{1} << 40, uint64_t{5} << 50), uint64_t{5} << 26);
}

// Independent derivation of the kept set: sort by (logit desc, id asc), then top-k, then the top-p
// prefix of the softmax probabilities, then min-p, in double arithmetic.
std::set<int32_t> kept_set(const std::vector<float>& l, float t, int top_k, float top_p, float min_p) {
  std::vector<int32_t> order;
  for (size_t i = 0; i < l.size(); ++i)
    if (!std::isnan(l[i]) && l[i] != -kInf) order.push_back(static_cast<int32_t>(i));
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] != l[b] ? l[a] > l[b] : a < b; });
  if (top_k > 0 && static_cast<size_t>(top_k) < order.size()) order.resize(static_cast<size_t>(top_k));
  const double lmax = l[order[0]];
  std::vector<double> w;
  for (int32_t id : order) w.push_back(std::exp((l[id] - lmax) / t));
  const double z = std::accumulate(w.begin(), w.end(), 0.0);
  size_t keep = 0;
  double acc = 0;
  while (keep < order.size() && acc < top_p * z) acc += w[keep++];
  if (top_p >= 1.0f) keep = order.size();
  std::set<int32_t> s;
  for (size_t i = 0; i < std::max<size_t>(keep, 1); ++i)
    if (w[i] >= min_p) s.insert(order[i]);
  return s;
}

// Token of `random` over a grid of n evenly spaced values of the unit interval.
std::vector<int32_t> draw_grid(const std::vector<float>& logits, SampleRow r, int n) {
  std::vector<int32_t> out;
  const long double step = std::ldexp(1.0L, 64) / n;
  for (int j = 0; j < n; ++j) {
    std::vector<float> l = logits;
    r.random = static_cast<uint64_t>(step * j);
    out.push_back(sample_row(l.data(), static_cast<int64_t>(l.size()), r));
  }
  return out;
}

// Over an even grid of `random`, the draw visits the kept tokens in id order (monotone), covers
// exactly the independently derived kept set, and gives each its renormalised softmax probability
// (to the grid's resolution).
TEST(SampleRow, DrawWalksTheKeptSetInIdOrderWithSoftmaxFrequencies) {
  std::vector<float> logits(300);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(std::sin(i * 1.7) * 3.0 + (i % 5) * 0.1);
  logits[17] = logits[42];  // a tie
  struct Case {
    float t;
    int top_k;
    float top_p, min_p;
  };
  for (const Case& c : {Case{1.0f, 0, 1.0f, 0.0f}, Case{0.7f, 20, 1.0f, 0.0f}, Case{1.3f, 0, 0.6f, 0.0f},
                        Case{1.0f, 0, 1.0f, 0.1f}, Case{0.9f, 40, 0.8f, 0.05f}, Case{2.0f, 1, 1.0f, 0.0f}}) {
    SCOPED_TRACE(testing::Message() << "t " << c.t << " top_k " << c.top_k << " top_p " << c.top_p << " min_p "
                                    << c.min_p);
    const int n = 50000;
    const std::vector<int32_t> got =
        draw_grid(logits, {.temperature = c.t, .top_k = c.top_k, .top_p = c.top_p, .min_p = c.min_p}, n);
    EXPECT_TRUE(std::is_sorted(got.begin(), got.end())) << "the walk is in id order";
    const std::set<int32_t> kept = kept_set(logits, c.t, c.top_k, c.top_p, c.min_p);
    std::map<int32_t, int> count;
    for (int32_t id : got) ++count[id];
    double z = 0;
    const double lmax = *std::max_element(logits.begin(), logits.end());
    for (int32_t id : kept) z += std::exp((logits[id] - lmax) / c.t);
    for (int32_t id : kept) {
      const double p = std::exp((logits[id] - lmax) / c.t) / z;
      if (p > 3.0 / n) {
        EXPECT_TRUE(count.count(id)) << "kept token " << id << " never drawn";
      }
      EXPECT_NEAR(count[id] / static_cast<double>(n), p, 1.5 / n + 1e-9) << "token " << id;
    }
    for (const auto& [id, k] : count) EXPECT_TRUE(kept.count(id)) << "token " << id << " outside the kept set";
  }
}

TEST(SampleRow, TiesAreOrderedByLowerIdFirst) {
  // Five equal logits: top_k = 2 keeps ids 1 and 2 (the lowest of the tied ones) with equal chances
  // (to the grid's resolution).
  const std::vector<float> l = {-1.0f, 3.0f, 3.0f, 3.0f, 3.0f, 3.0f, 0.5f};
  auto got = draw_grid(l, {.temperature = 1.0f, .top_k = 2}, 1000);
  EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), (std::set<int32_t>{1, 2}));
  EXPECT_NEAR(std::count(got.begin(), got.end(), 1), 500, 1);
  // top_p reaching 3/5 of the tied mass keeps the three lowest ids.
  got = draw_grid(l, {.temperature = 1.0f, .top_p = 0.55f}, 999);
  EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), (std::set<int32_t>{1, 2, 3}));
  // −0 and +0 tie: top_k = 1 keeps the lower id.
  got = draw_grid({-5.0f, 0.0f, -0.0f}, {.temperature = 1.0f, .top_k = 1}, 10);
  EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), (std::set<int32_t>{1}));
  got = draw_grid({-0.0f, 0.0f, -5.0f}, {.temperature = 1.0f, .top_k = 1}, 10);
  EXPECT_EQ(std::set<int32_t>(got.begin(), got.end()), (std::set<int32_t>{0}));
}

TEST(SampleRow, TopKAtOrAboveTheCandidatesKeepsThemAll) {
  const std::vector<float> l = {0.5f, 1.0f, -2.0f, 0.25f};
  for (int k : {4, 5, 1000})
    EXPECT_EQ(draw_grid(l, {.temperature = 1.0f, .top_k = k}, 4000), draw_grid(l, {.temperature = 1.0f}, 4000)) << k;
}

TEST(SampleRow, GreedyAndTheDegenerateRows) {
  const float nan = std::nanf("");
  auto one = [](std::vector<float> l, SampleRow r) { return sample_row(l.data(), static_cast<int64_t>(l.size()), r); };
  // Greedy: lowest id on ties, NaN never.
  EXPECT_EQ(one({0.5f, 2.0f, nan, 2.0f}, {.temperature = 0}), 1);
  EXPECT_EQ(one({nan, -kInf, -3.0f, -2.5f}, {.temperature = 0}), 3);
  EXPECT_EQ(one({nan, nan}, {.temperature = 0}), 0);
  for (uint64_t random : {uint64_t{0}, uint64_t{1} << 63, ~uint64_t{0}}) {
    // NaN and −inf are never drawn.
    const int32_t t = one({-kInf, 0.0f, nan, 0.0f, -kInf}, {.temperature = 1.0f, .random = random});
    EXPECT_TRUE(t == 1 || t == 3) << t;
    // No weight left: the greedy token (+inf wins; all −inf gives the lowest id; all NaN gives 0).
    EXPECT_EQ(one({1.0f, kInf, 2.0f, kInf}, {.temperature = 1.0f, .random = random}), 1);
    EXPECT_EQ(one({nan, -kInf, -kInf}, {.temperature = 1.0f, .random = random}), 1);
    EXPECT_EQ(one({nan, nan, nan}, {.temperature = 0.5f, .random = random}), 0);
    EXPECT_EQ(one({4.0f}, {.temperature = 1.0f, .top_k = 3, .top_p = 0.1f, .random = random}), 0);
  }
  // A token more than (S + 1)·ln2·T below the top has zero weight (S = 62 for 3 tokens) and is never drawn.
  const std::vector<float> far = {0.0f, -50.0f, -0.5f};
  const std::vector<int32_t> got = draw_grid(far, {.temperature = 1.0f}, 100000);
  EXPECT_EQ(std::count(got.begin(), got.end(), 1), 0);
}

TEST(SampleRow, PenaltyEditsApplyBeforeEverythingElse) {
  // Edits: token 0 ÷ r (positive), token 2 × r (negative) then − 0.75, token 3 − 3.
  const std::vector<PenaltyEdit> edits = {
      {.token = 0, .repeat = 1}, {.token = 2, .repeat = 1, .delta = 0.75f}, {.token = 3, .delta = 3.0f}};
  std::vector<float> l = {2.0f, 1.0f, -1.0f, 4.0f, 0.5f};
  EXPECT_EQ(sample_row(l.data(), 5, {.temperature = 0, .repetition_penalty = 2.0f, .edits = edits}), 0);
  EXPECT_EQ(l, (std::vector<float>{1.0f, 1.0f, -2.75f, 1.0f, 0.5f}));  // ties at 1.0: lowest id
  // The sampled distribution is that of the edited logits.
  std::vector<float> edited = {1.0f, 1.0f, -2.75f, 1.0f, 0.5f};
  const SampleRow r{.temperature = 1.0f, .repetition_penalty = 2.0f, .edits = edits};
  std::vector<int32_t> a, b;
  for (int j = 0; j < 500; ++j) {
    std::vector<float> x = {2.0f, 1.0f, -1.0f, 4.0f, 0.5f}, y = edited;
    SampleRow rr = r, plain{.temperature = 1.0f};
    rr.random = plain.random = 0x9e3779b97f4a7c15ull * static_cast<uint64_t>(j + 1);
    a.push_back(sample_row(x.data(), 5, rr));
    b.push_back(sample_row(y.data(), 5, plain));
  }
  EXPECT_EQ(a, b);
}

TEST(SampleRow, ValidationNamesTheEntryAndField) {
  const std::vector<PenaltyEdit> dup = {{.token = 3}, {.token = 3}}, out_of_range = {{.token = 10}};
  auto expect_bad = [](std::vector<SampleRow> rows, int64_t n_rows, const char* what) {
    const Status st = validate_sample_rows(rows, n_rows, 10);
    EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << what;
    EXPECT_NE(st.message().find(what), std::string::npos) << st.message();
  };
  EXPECT_TRUE(validate_sample_rows(std::vector<SampleRow>{{.row = 0}, {.row = 2}}, 3, 10).ok());
  expect_bad({{.row = 1}, {.row = 1}}, 3, "row 1");
  expect_bad({{.row = 3}}, 3, "row 3");
  expect_bad({{.row = 0, .temperature = -1.0f}}, 1, "temperature");
  expect_bad({{.row = 0, .temperature = std::nanf("")}}, 1, "temperature");
  expect_bad({{.row = 0, .top_k = -2}}, 1, "top_k");
  expect_bad({{.row = 0, .top_p = 0.0f}}, 1, "top_p");
  expect_bad({{.row = 0, .min_p = 1.0f}}, 1, "min_p");
  expect_bad({{.row = 0, .repetition_penalty = 0.0f}}, 1, "repetition_penalty");
  expect_bad({{.row = 0}, {.row = 1, .edits = dup}}, 2, "entry 1: token 3 has two");
  expect_bad({{.row = 0, .edits = out_of_range}}, 1, "token 10 outside");
  // A row's edits do not leak into the next row's duplicate check.
  const std::vector<PenaltyEdit> three = {{.token = 3}};
  EXPECT_TRUE(
      validate_sample_rows(std::vector<SampleRow>{{.row = 0, .edits = three}, {.row = 1, .edits = three}}, 2, 10).ok());
}

}  // namespace
}  // namespace gptoss
