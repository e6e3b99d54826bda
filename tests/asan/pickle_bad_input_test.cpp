// The reference-pickle reader under AddressSanitizer: every truncation and every byte flip of a valid
// pickle is either read or a kdae::Error naming the file, never a crash or an out-of-bounds read.
#include <gtest/gtest.h>

#include <string>

#include "common/error.h"
#include "data/pickle-reader.h"

using kdae::data::JsonlRecord;
using kdae::data::read_reference_pickle;

namespace {

// pickle.dumps([("<s>[INST] a [/INST] b</s>", 1), ("<s>[INST] c [/INST] d</s>", True), "x"], protocol=4)
const std::string kGood("\x80\x04\x95\x48\x00\x00\x00\x00\x00\x00\x00\x5d\x94\x28\x8c\x19\x3c\x73\x3e\x5b\x49\x4e\x53\x54\x5d\x20\x61\x20\x5b\x2f\x49\x4e\x53\x54\x5d\x20\x62\x3c\x2f\x73\x3e\x94\x4b\x01\x86\x94\x8c\x19\x3c\x73\x3e\x5b\x49\x4e\x53\x54\x5d\x20\x63\x20\x5b\x2f\x49\x4e\x53\x54\x5d\x20\x64\x3c\x2f\x73\x3e\x94\x88\x86\x94\x8c\x01\x78\x94\x65\x2e", 83);

// "" when read, else the error.
std::string error_of(const std::string& bytes, int* items = nullptr) {
  try {
    int n = 0;
    read_reference_pickle(bytes, "d.pkl", [&](JsonlRecord&&) { ++n; });
    if (items) *items = n;
  } catch (const kdae::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(PickleBadInput, TheGoodFileReads) {
  int items = 0;
  EXPECT_EQ(error_of(kGood, &items), "");
  EXPECT_EQ(items, 3);
}

TEST(PickleBadInput, EveryTruncationIsAnErrorNamingTheFile) {
  for (size_t n = 0; n < kGood.size(); ++n) {
    const std::string e = error_of(kGood.substr(0, n));
    EXPECT_EQ(e.rfind("d.pkl: ", 0), 0u) << n << ": " << e;
  }
}

TEST(PickleBadInput, EveryByteFlipIsReadOrAnError) {
  for (size_t i = 0; i < kGood.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = kGood;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      const std::string e = error_of(bad);
      EXPECT_TRUE(e.empty() || e.rfind("d.pkl", 0) == 0) << i << ":" << bit << ": " << e;
    }
  }
}
