// Corrupt safetensors headers, parsed under AddressSanitizer: each must be a kdae::Error naming
// the file and the fault, never a crash or an out-of-bounds read.
#include <gtest/gtest.h>

#include <string>

#include "common/error.h"
#include "io/safetensors-format.h"

using kdae::io::parse_safetensors_header;

namespace {

std::string file_with(const std::string& json, size_t data_bytes, int64_t length_override = -1) {
  std::string out(8, '\0');
  const uint64_t len = length_override >= 0 ? static_cast<uint64_t>(length_override) : json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + json + std::string(data_bytes, '\0');
}

std::string error_of(const std::string& bytes) {
  try {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "m.safetensors");
  } catch (const kdae::Error& e) {
    return e.what();
  }
  return "";
}

const std::string kGood = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";

}  // namespace

TEST(SafetensorsBadInput, GoodFileParses) {
  const auto h = [] {
    const std::string f = file_with(kGood, 16);
    return parse_safetensors_header(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "m");
  }();
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].shape, (std::vector<int64_t>{2, 2}));
}

TEST(SafetensorsBadInput, EachCorruptionNamesFileAndFault) {
  EXPECT_NE(error_of("abc").find("truncated"), std::string::npos);
  EXPECT_NE(error_of(file_with(kGood, 16, 1000)).find("past the end"), std::string::npos);
  EXPECT_NE(error_of(file_with(kGood, 16, int64_t{1} << 40)).find("implausibly large"), std::string::npos);
  EXPECT_NE(error_of(file_with(kGood, 8)).find("past the data buffer"), std::string::npos);
  EXPECT_NE(error_of(file_with(R"({"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,2]}})", 2)).find("unknown dtype 'Q9'"),
            std::string::npos);
  EXPECT_NE(error_of(file_with(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)).find("needs 12"),
            std::string::npos);
  EXPECT_NE(error_of(file_with(R"({"w":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}})", 8))
                .find("overflows"),
            std::string::npos);
  EXPECT_NE(error_of(file_with(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6))
                .find("overlap"),
            std::string::npos);
  EXPECT_NE(error_of(file_with("{not json", 0)).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of(file_with(kGood, 16, 1000)).find("m.safetensors"), std::string::npos);
}

TEST(SafetensorsBadInput, EveryTruncationIsAnErrorNotACrash) {
  const std::string good = file_with(kGood, 16);
  for (size_t n = 0; n < good.size(); ++n) EXPECT_FALSE(error_of(good.substr(0, n)).empty()) << n;
}
