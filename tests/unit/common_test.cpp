#include <fcntl.h>
#include <gtest/gtest.h>

#include "common/fd.h"
#include "common/json.h"
#include "common/result.h"

namespace sockrelay {
namespace {

TEST(Result, CarriesValueOrError) {
  Result<int> good = 7;
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 7);
  Result<int> bad = Error{ENOENT, "open /x"};
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().describe(), "open /x: No such file or directory");
  EXPECT_EQ(bad.error().wrap("load config").message, "load config: open /x");
}

TEST(Fd, ClosesOnceAndMoves) {
  int raw = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(raw, 0);
  {
    Fd a(raw);
    Fd b = std::move(a);
    EXPECT_FALSE(a.valid());
    EXPECT_EQ(b.get(), raw);
  }
  EXPECT_EQ(fcntl(raw, F_GETFD), -1) << "fd should be closed by the destructor";
}

TEST(JsonWriter, NestsAndEscapes) {
  JsonWriter j;
  j.begin_object().field("a", 1).key("b").begin_array().value("x\"y").value(true).end_array().end_object();
  EXPECT_EQ(j.str(), R"({"a":1,"b":["x\"y",true]})");
}

}  // namespace
}  // namespace sockrelay
