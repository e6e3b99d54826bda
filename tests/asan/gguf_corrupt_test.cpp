// Corrupt and hostile GGUF input must end in a kdae::Error naming the file, never a crash, an
// out-of-bounds read (this target runs under AddressSanitizer) or a huge allocation. Torch-free.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "io/gguf-format.h"

using kdae::io::GgmlType;
using kdae::io::GgufTensorInfo;
using kdae::io::GgufType;
using kdae::io::GgufValue;

namespace {

// Hand-rolled little-endian byte builder so tests can write fields the real writer refuses to.
struct Bytes {
  std::string b;
  template <typename T>
  Bytes& put(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b += s;
    return *this;
  }
};

kdae::io::GgufFile parse(const std::string& bytes) {
  // A heap copy of exactly the right size so ASan catches any read past the end.
  std::vector<uint8_t> copy(bytes.begin(), bytes.end());
  return kdae::io::parse_gguf(copy.data(), copy.size(), "test.gguf");
}

void expect_error(const std::string& bytes, const std::string& fragment) {
  try {
    parse(bytes);
    FAIL() << "expected an error containing '" << fragment << "'";
  } catch (const kdae::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("test.gguf"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
  }
}

// A valid file: every scalar type, a string array, a nested array, two tensors (F32 and Q8_0).
std::string valid_file() {
  std::vector<std::pair<std::string, GgufValue>> md;
  md.emplace_back("general.architecture", GgufValue::of_string("llama"));
  md.emplace_back("llama.block_count", GgufValue::of_u32(2));
  md.emplace_back("neg", GgufValue::of_i32(-7));
  md.emplace_back("big", GgufValue::of_u64(1ull << 40));
  md.emplace_back("eps", GgufValue::of_f32(1e-5f));
  md.emplace_back("flag", GgufValue::of_bool(true));
  GgufValue f64;
  f64.type = GgufType::F64;
  f64.f = 0.125;
  md.emplace_back("f64", f64);
  md.emplace_back("tokens", GgufValue::of_array(GgufType::STRING, {GgufValue::of_string("a"), GgufValue::of_string("bc")}));
  md.emplace_back("nested", GgufValue::of_array(GgufType::ARRAY, {GgufValue::of_array(GgufType::I32, {GgufValue::of_i32(3)})}));
  std::vector<GgufTensorInfo> tensors(2);
  tensors[0].name = "a.weight";
  tensors[0].dims = {3, 2};
  tensors[0].type = GgmlType::F32;
  tensors[1].name = "b.weight";
  tensors[1].dims = {32, 1};
  tensors[1].type = GgmlType::Q8_0;
  std::string out = kdae::io::make_gguf_header(md, tensors, 32);
  const size_t data_start = out.size();
  out.resize(data_start + tensors[1].offset + tensors[1].n_bytes, '\0');
  for (int k = 0; k < 6; ++k) {
    float v = float(k);
    std::memcpy(&out[data_start + tensors[0].offset + 4 * k], &v, 4);
  }
  return out;
}

// Header prefix up to and including the counts.
Bytes header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
  Bytes b;
  b.b = "GGUF";
  b.put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
  return b;
}

}  // namespace

TEST(GgufFormat, ParsesWhatItWrites) {
  const auto f = parse(valid_file());
  EXPECT_EQ(f.version, 3u);
  ASSERT_EQ(f.metadata.size(), 9u);
  EXPECT_EQ(f.get("general.architecture").as_string("x"), "llama");
  EXPECT_EQ(f.get("llama.block_count").as_int("x"), 2);
  EXPECT_EQ(f.get("neg").as_int("x"), -7);
  EXPECT_EQ(f.get("big").as_int("x"), int64_t(1) << 40);
  EXPECT_FLOAT_EQ(float(f.get("eps").as_double("x")), 1e-5f);
  EXPECT_TRUE(f.get("flag").as_bool("x"));
  EXPECT_EQ(f.get("f64").as_double("x"), 0.125);
  ASSERT_EQ(f.get("tokens").as_array("x").size(), 2u);
  EXPECT_EQ(f.get("tokens").items[1].s, "bc");
  EXPECT_EQ(f.get("nested").items[0].items[0].i, 3);
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensors[0].torch_shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.tensors[0].n_bytes, 24u);
  EXPECT_EQ(f.tensors[1].offset, 32u);
  EXPECT_EQ(f.tensors[1].n_bytes, 34u);
  EXPECT_EQ(f.data_offset % 32, 0u);
  EXPECT_EQ(f.find("missing"), nullptr);
  EXPECT_THROW(f.get("missing"), kdae::Error);
  EXPECT_THROW(f.get("neg").as_string("x"), kdae::Error);
}

TEST(GgufFormat, EveryTruncationIsAnError) {
  const std::string good = valid_file();
  for (size_t n = 0; n < good.size(); ++n) {
    try {
      parse(good.substr(0, n));
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const kdae::Error& e) {
      EXPECT_NE(std::string(e.what()).find("test.gguf"), std::string::npos);
    }
  }
}

TEST(GgufFormat, BadMagicAndVersions) {
  std::string bad = valid_file();
  bad[0] = 'X';
  expect_error(bad, "bad magic");
  expect_error(header(0, 0, 1).b, "version 1");
  expect_error(header(0, 0, 7).b, "unsupported GGUF version 7");
  expect_error(header(0, 0, 0x03000000).b, "big-endian");
  expect_error("GG", "too short");
}

TEST(GgufFormat, AbsurdCountsAndLengths) {
  expect_error(header(0, 1ull << 60).b, "metadata count");
  expect_error(header(1ull << 60, 0).b, "tensor count");
  expect_error(header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(~0ull).b, "absurd length");
  expect_error(header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(1000).b, "truncated");
  expect_error(header(0, 1).put<uint64_t>(1ull << 62).put<uint64_t>(0).b, "absurd length");
  expect_error(header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(8).put<uint64_t>(1ull << 61).b, "array length");
  expect_error(header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(5).put<uint32_t>(1).b, "array length");
  expect_error(header(0, 1).str("k").put<uint32_t>(13).put<uint32_t>(0).b, "unknown value type 13");
  expect_error(header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(99).put<uint64_t>(0).b, "unknown array element type");
  expect_error(header(0, 1).str("k").put<uint32_t>(7).put<uint8_t>(2).b, "bool value 2");
  expect_error(header(0, 2).str("k").put<uint32_t>(4).put<uint32_t>(1).str("k").put<uint32_t>(4).put<uint32_t>(1).b,
               "duplicate metadata key");
  // Arrays nested past the depth limit.
  Bytes deep = header(0, 1).str("k").put<uint32_t>(9);
  for (int d = 0; d < 8; ++d) deep.put<uint32_t>(9).put<uint64_t>(1);
  deep.b.append(64, '\0');
  expect_error(deep.b, "nested deeper");
}

TEST(GgufFormat, BadTensorInfos) {
  auto tensor = [](uint32_t n_dims, std::vector<uint64_t> dims, uint32_t type, uint64_t offset) {
    Bytes b = header(1, 0).str("t");
    b.put<uint32_t>(n_dims);
    for (auto d : dims) b.put<uint64_t>(d);
    b.put<uint32_t>(type).put<uint64_t>(offset);
    b.b.resize((b.b.size() + 31) / 32 * 32, '\0');
    b.b.append(64, '\0');  // 64 bytes of data
    return b.b;
  };
  EXPECT_NO_THROW(parse(tensor(1, {16}, 0, 0)));
  expect_error(tensor(1, {16}, 0, 32), "runs past the end");
  expect_error(tensor(1, {17}, 0, 0), "runs past the end");
  expect_error(tensor(1, {16}, 0, ~0ull - 31), "runs past the end");
  expect_error(tensor(1, {16}, 0, 4), "alignment");
  expect_error(tensor(1, {16}, 20, 0), "unknown or unsupported ggml type 20");
  expect_error(tensor(1, {16}, 3, 0), "block size");
  expect_error(tensor(5, {1, 1, 1, 1, 1}, 0, 0), "5 dimensions");
  expect_error(tensor(0, {}, 0, 0), "0 dimensions");
  expect_error(tensor(4, {1ull << 32, 1ull << 32, 1ull << 32, 1}, 0, 0), "overflows");
  expect_error(tensor(2, {1ull << 62, 2}, 0, 0), "overflows");
  expect_error(tensor(1, {1ull << 63}, 0, 0), "out of range");
  // Bad alignment key.
  expect_error(header(0, 1).str("general.alignment").put<uint32_t>(4).put<uint32_t>(3).b, "power of two");
  // Two tensors sharing bytes.
  Bytes two = header(2, 0);
  for (const char* name : {"a", "b"}) two.str(name).put<uint32_t>(1).put<uint64_t>(16).put<uint32_t>(0).put<uint64_t>(0);
  two.b.resize((two.b.size() + 31) / 32 * 32, '\0');
  two.b.append(64, '\0');
  expect_error(two.b, "overlap");
}

// Random byte flips over a valid file: parse or throw kdae::Error, nothing else (ASan watches reads).
TEST(GgufFormat, RandomCorruptionNeverCrashes) {
  const std::string good = valid_file();
  std::mt19937 rng(1234);
  int parsed = 0, rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bad = good;
    const int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) bad[rng() % bad.size()] = char(rng());
    try {
      parse(bad);
      ++parsed;
    } catch (const kdae::Error&) {
      ++rejected;
    }
  }
  EXPECT_GT(rejected, 100);
  EXPECT_EQ(parsed + rejected, 3000);
}
