// Status / Result<T> and the propagation macros.
#include <gtest/gtest.h>

#include <memory>
#include <set>
#include <string>

#include "core/status.h"

namespace gptoss {
namespace {

TEST(Status, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kOk);
  EXPECT_EQ(s.to_string(), "ok");
  EXPECT_TRUE(Status::ok_status().ok());
}

TEST(Status, ErrorCarriesCodeAndFormattedMessage) {
  Status s = make_error(ErrorCode::kNotFound, "{}: missing tensor '{}'", "/m", "lm_head.weight");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ErrorCode::kNotFound);
  EXPECT_EQ(s.message(), "/m: missing tensor 'lm_head.weight'");
  EXPECT_EQ(s.to_string(), "not_found: /m: missing tensor 'lm_head.weight'");
}

TEST(Status, EveryCodeHasADistinctName) {
  std::set<std::string> names;
  for (int c = 0; c <= static_cast<int>(ErrorCode::kInternal); ++c)
    names.insert(error_code_name(static_cast<ErrorCode>(c)));
  EXPECT_EQ(names.size(), static_cast<size_t>(ErrorCode::kInternal) + 1);
  EXPECT_EQ(names.count("unknown"), 0u);
}

TEST(Result, HoldsValueOrStatus) {
  Result<int> v(42);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(*v, 42);
  EXPECT_TRUE(v.status().ok());
  Result<int> e(Status(ErrorCode::kFormat, "bad"));
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), ErrorCode::kFormat);
  EXPECT_EQ(e.status().message(), "bad");
}

TEST(Result, OkStatusWithoutValueBecomesAnError) {
  Result<int> r{Status()};
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInternal);
}

TEST(ResultDeathTest, ValueOfAnErrorAborts) {
  Result<int> e(Status(ErrorCode::kNotFound, "gone"));
  EXPECT_DEATH((void)e.value(), "not_found: gone");
}

TEST(Result, MoveOnlyValues) {
  Result<std::unique_ptr<std::string>> r(std::make_unique<std::string>("abc"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->get()->size(), 3u);
  std::unique_ptr<std::string> taken = std::move(r).value();
  EXPECT_EQ(*taken, "abc");
}

Result<int> parse_positive(int x) {
  if (x <= 0) return make_error(ErrorCode::kInvalidArgument, "{} is not positive", x);
  return x;
}

Result<int> doubled(int x) {
  GPTOSS_ASSIGN_OR_RETURN(int v, parse_positive(x));
  return 2 * v;
}

Status check_both(int a, int b) {
  GPTOSS_RETURN_IF_ERROR(parse_positive(a).status());
  GPTOSS_RETURN_IF_ERROR(parse_positive(b).status());
  return {};
}

TEST(Result, MacrosPropagateTheFirstError) {
  EXPECT_EQ(*doubled(21), 42);
  auto bad = doubled(-3);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "-3 is not positive");
  EXPECT_TRUE(check_both(1, 2).ok());
  Status s = check_both(1, 0);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "0 is not positive");
  EXPECT_EQ(check_both(-1, 0).message(), "-1 is not positive");
}

}  // namespace
}  // namespace gptoss
