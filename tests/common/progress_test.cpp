#include "common/progress.h"

#include <gtest/gtest.h>

#include <sstream>

using namespace kdae;

TEST(Progress, PlainLinesAreRateLimited) {
  double t = 0;
  std::ostringstream out;
  ProgressOptions o;
  o.label = "train";
  o.total = 100;
  o.tty = false;
  o.out = &out;
  o.plain_interval_s = 10;
  o.clock = [&] { return t; };
  Progress p(o);
  for (int i = 0; i < 50; ++i) {
    t += 0.5;  // 2 it/s
    p.set("loss", 2.5 - i * 0.01);
    p.advance();
  }
  p.finish();
  // Lines at t=0.5, 10.5, 20.5 and the final one: plain lines only every 10 s.
  std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4) << text;
  EXPECT_EQ(text.find('\r'), std::string::npos);
  const std::string last = text.substr(text.rfind('\n', text.size() - 2) + 1);
  EXPECT_EQ(last, "train  50% |##########..........| 50/100  2.00 it/s  ETA 25s  loss=2.01\n");
}

TEST(Progress, TtyRedrawsInPlaceWithTokenRate) {
  double t = 0;
  std::ostringstream out;
  ProgressOptions o;
  o.total = 4;
  o.tty = true;
  o.rate_unit = "tok";
  o.out = &out;
  o.clock = [&] { return t; };
  Progress p(o);
  t = 1;
  p.advance(1, 1000);
  t = 1.05;  // within 1/10 s: no redraw
  p.advance(1, 1000);
  t = 2;
  p.advance(2, 2000);
  p.finish();
  std::string text = out.str();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\r'), 3) << text;  // two redraws + finish
  EXPECT_NE(text.find("4/4  2000 tok/s  ETA 0s"), std::string::npos) << text;
  EXPECT_EQ(text.back(), '\n');
}

TEST(Progress, Durations) {
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(261), "4m21s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
}
