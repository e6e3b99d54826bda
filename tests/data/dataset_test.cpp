// JSONL data files -> samples (forms, domain/weight, errors with file:line, truncation, minimum
// supervised tokens, dedup, the cache) and the sampler. A character-level tokenizer written into a
// temp dir makes every expected token count a string length; HF parity of real tokenizers and
// templates is tests/python/test_data_pipeline.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <set>

#include "common/error.h"
#include "common/files.h"
#include "data/dataset-cache.h"
#include "data/dataset.h"
#include "data/sampler.h"

using namespace kdae::data;
namespace fs = std::filesystem;

namespace {

constexpr const char* kChatml =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}";

// One token per printable ASCII character or newline; four special tokens.
void write_char_tokenizer(const fs::path& dir, bool with_template) {
  nlohmann::json vocab = nlohmann::json::object();
  int id = 0;
  for (char c = ' '; c <= '~'; ++c) vocab[std::string(1, c)] = id++;
  vocab["\n"] = id++;
  nlohmann::json added = nlohmann::json::array();
  for (const char* t : {"<s>", "</s>", "<|im_start|>", "<|im_end|>"}) {
    added.push_back({{"id", id}, {"content", t}, {"special", true}, {"normalized", false}, {"lstrip", false},
                     {"rstrip", false}, {"single_word", false}});
    vocab[t] = id++;
  }
  const nlohmann::json tok = {{"added_tokens", added}, {"decoder", {{"type", "Fuse"}}},
                              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  nlohmann::json config = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  if (with_template) config["chat_template"] = kChatml;
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << tok.dump();
  std::ofstream(dir / "tokenizer_config.json") << config.dump();
}

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kdae-dataset-test-" + std::to_string(::getpid()));
    kdae::remove_tree(dir_);
    write_char_tokenizer(dir_ / "tok", true);
    write_char_tokenizer(dir_ / "tok-plain", false);
    tokenizer_ = kdae::tok::Tokenizer::load(dir_ / "tok");
  }
  void TearDown() override { kdae::remove_tree(dir_); }

  fs::path write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  Dataset load(const std::string& text, DatasetOptions o = {}) { return load_dataset(write("d.jsonl", text), *tokenizer_, o); }
  std::string error(const std::string& text, DatasetOptions o = {}) {
    try {
      load(text, o);
    } catch (const kdae::Error& e) {
      return e.what();
    }
    return "no error";
  }
  std::string decoded(const TokenizedSample& s) const { return tokenizer_->decode(s.ids, false); }
  std::string supervised_text(const TokenizedSample& s) const {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < s.ids.size(); ++i)
      if (s.supervised[i]) ids.push_back(s.ids[i]);
    return tokenizer_->decode(ids, false);
  }

  fs::path dir_;
  std::unique_ptr<kdae::tok::Tokenizer> tokenizer_;
};

const std::string kQa = R"({"prompt": "hi", "response": "ok"})";

}  // namespace

TEST_F(DatasetTest, EveryLineFormRendersAndMasksTheAnswer) {
  const auto d = load(
      R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "r"}, {"role": "assistant", "content": "a2"}]})"
      "\n\n"
      R"({"instruction": "do", "input": "this", "output": "done"})"
      "\n"
      R"({"instruction": "do", "output": "x"})"
      "\n" + kQa + "\n"
      R"({"text": "<s>[INST] p [/INST] ans</s>[INST] p2 [/INST] b</s>"})"
      "\n");
  ASSERT_EQ(d.samples.size(), 5u);
  EXPECT_EQ(d.stats.lines, 5);  // the blank line is not counted
  EXPECT_EQ(d.sample_lines, (std::vector<int64_t>{1, 3, 4, 5, 6}));
  EXPECT_EQ(d.chat_template, "chatml");  // detected from tokenizer_config.json
  EXPECT_EQ(decoded(d.samples[0]),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
            "<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\na2<|im_end|>\n");
  EXPECT_EQ(supervised_text(d.samples[0]), "a1<|im_end|>a2<|im_end|>");
  EXPECT_EQ(decoded(d.samples[1]), "<|im_start|>user\ndo\n\nthis<|im_end|>\n<|im_start|>assistant\ndone<|im_end|>\n");
  EXPECT_EQ(supervised_text(d.samples[1]), "done<|im_end|>");
  EXPECT_EQ(decoded(d.samples[2]), "<|im_start|>user\ndo<|im_end|>\n<|im_start|>assistant\nx<|im_end|>\n");
  EXPECT_EQ(decoded(d.samples[3]), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n");
  EXPECT_EQ(supervised_text(d.samples[4]), " ans</s> b</s>");
  // Character tokens: 3 + 1 special per sample; stats add up over kept samples.
  int64_t tokens = 0, supervised = 0;
  for (const auto& s : d.samples) {
    tokens += static_cast<int64_t>(s.ids.size());
    supervised += std::count(s.supervised.begin(), s.supervised.end(), 1);
  }
  EXPECT_EQ(d.stats.tokens, tokens);
  EXPECT_EQ(d.stats.supervised_tokens, supervised);
  EXPECT_EQ(std::count(d.samples[3].supervised.begin(), d.samples[3].supervised.end(), 1), 3);  // o k <|im_end|>
}

TEST_F(DatasetTest, TemplateByNameAndReferenceMarkers) {
  DatasetOptions o;
  o.chat_template = "zephyr";
  const auto d = load(kQa + "\n", o);
  EXPECT_EQ(decoded(d.samples[0]), "<|user|>\nhi</s>\n<|assistant|>\nok</s>\n");
  EXPECT_EQ(supervised_text(d.samples[0]), "ok</s>");
  o.instruction_key = "Q:";
  o.response_key = "A:";
  const auto r = load(R"({"text": "Q: p A: yes"})" "\n", o);
  EXPECT_EQ(supervised_text(r.samples[0]), " yes");
}

TEST_F(DatasetTest, DomainAndWeight) {
  const auto d = load(kQa + "\n" + R"({"prompt": "a", "response": "b", "domain": 1, "weight": 2.5})" "\n" +
                      R"({"prompt": "a", "response": "c", "domain": "med"})" "\n" +
                      R"({"prompt": "a", "response": "d", "domain": false})" "\n" +
                      R"({"prompt": "a", "response": "e", "domain": true})" "\n");
  EXPECT_EQ(d.domain_names, (std::vector<std::string>{"general", "domain", "med"}));
  std::vector<int64_t> domains;
  for (const auto& s : d.samples) domains.push_back(s.domain);
  EXPECT_EQ(domains, (std::vector<int64_t>{0, 1, 2, 0, 1}));
  EXPECT_FLOAT_EQ(d.samples[1].weight, 2.5f);
  EXPECT_FLOAT_EQ(d.samples[0].weight, 1.0f);
  const std::string f = (dir_ / "d.jsonl").string();
  EXPECT_EQ(error(kQa + "\n" + R"({"prompt": "a", "response": "b", "domain": 2})"),
            f + ":2: domain must be 0/1 or a name, got 2");
  EXPECT_NE(error(R"({"prompt": "a", "response": "b", "domain": 0.5})").find(f + ":1: domain must be 0/1 or a name"),
            std::string::npos);
  EXPECT_NE(error(R"({"prompt": "a", "response": "b", "weight": 0})").find(f + ":1: weight must be a number > 0"),
            std::string::npos);
  EXPECT_NE(error(R"({"prompt": "a", "response": "b", "weight": "x"})").find(f + ":1: weight must be a number > 0"),
            std::string::npos);
}

TEST_F(DatasetTest, StructuralErrorsNameFileAndLine) {
  const std::string f = (dir_ / "d.jsonl").string();
  const auto has = [&](const std::string& text, const std::string& expected) {
    const std::string e = error(text);
    EXPECT_NE(e.find(expected), std::string::npos) << e;
  };
  has(kQa + "\n\n{\"prompt\": \"a\",", f + ":3: malformed JSON");
  has(kQa + "\n" + R"({"instruction": "do"})", f + ":2: missing field 'output'");
  has(R"({"prompt": 3, "response": "b"})", f + ":1: field 'prompt' must be a string, got number");
  has(R"({"messages": {"role": "user"}})", f + ":1: field 'messages' must be an array");
  has(R"({"messages": [{"role": "bot", "content": "x"}]})", f + ":1: messages[0]: unknown role 'bot'");
  has(R"({"messages": [{"role": "user", "content": 1}]})", f + ":1: messages[0]: field 'content' must be a string");
  has(R"({"answer": "x"})", f + ":1: no sample found");
  has("[1, 2]", f + ":1: expected a JSON object");
}

TEST_F(DatasetTest, ContentProblemsAreCountedSkipsOrErrorsWhenStrict) {
  const std::string text =
      kQa + "\n" + R"({"text": "no markers here"})" "\n" + R"({"text": "[INST] only a question"})" "\n" +
      R"({"prompt": "a", "response": "  "})" "\n" +
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]})" "\n" +
      R"({"messages": [{"role": "user", "content": "a"}]})" "\n" + "{\"prompt\": \"\xff\", \"response\": \"b\"}\n" +
      R"({"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]})" "\n";
  DatasetOptions o;
  o.chat_template = "mistral";  // rejects two assistant turns in a row, unlike chatml
  const auto d = load(text, o);
  EXPECT_EQ(d.stats.samples, 1);
  EXPECT_EQ(d.stats.lines, 8);
  EXPECT_EQ(d.stats.skipped, (std::map<std::string, int64_t>{{"no [INST] marker", 1},
                                                             {"no [/INST] marker", 1},
                                                             {"empty assistant turn", 1},
                                                             {"ends with a user turn", 1},
                                                             {"no assistant turn", 1},
                                                             {"invalid UTF-8", 1},
                                                             {"roles the template cannot render", 1}}));
  o.skip_invalid = false;
  const std::string e = error(text, o);
  EXPECT_EQ(e, (dir_ / "d.jsonl").string() + ":2: no [INST] marker");
}

TEST_F(DatasetTest, ConversationsWithoutADetectableTemplateAskForOne) {
  const auto plain = kdae::tok::Tokenizer::load(dir_ / "tok-plain");
  const fs::path f = write("d.jsonl", R"({"text": "[INST] q [/INST] a"})" "\n" + kQa + "\n");
  try {
    load_dataset(f, *plain, {});
    FAIL() << "expected an error";
  } catch (const kdae::Error& e) {
    EXPECT_NE(std::string(e.what()).find(f.string() + ":2: a prompt/response sample needs a chat template"),
              std::string::npos);
    EXPECT_NE(std::string(e.what()).find("set chat_template"), std::string::npos);
  }
  // Reference-format lines alone need no template.
  const fs::path g = write("g.jsonl", R"({"text": "[INST] q [/INST] a"})" "\n");
  EXPECT_EQ(load_dataset(g, *plain, {}).samples.size(), 1u);
}

TEST_F(DatasetTest, TruncationKeepsTheFirstTokensOrDrops) {
  // Character tokens: "<|im_start|>user\nhi<|im_end|>\n" (10) + "<|im_start|>assistant\n" (11) + answer + "<|im_end|>\n" (2).
  const std::string long_answer = R"({"prompt": "hi", "response": "abcdefghij"})" "\n";
  DatasetOptions o;
  const auto full = load(long_answer, o);
  ASSERT_EQ(full.samples[0].ids.size(), 10u + 11u + 10u + 2u);
  o.seq_length = 25;  // the short sample is exactly 25 tokens: kept whole
  const auto cut = load(long_answer + kQa + "\n", o);
  ASSERT_EQ(cut.samples.size(), 2u);
  EXPECT_EQ(cut.stats.truncated, 1);
  EXPECT_EQ(cut.samples[0].ids, std::vector<int32_t>(full.samples[0].ids.begin(), full.samples[0].ids.begin() + 25));
  EXPECT_EQ(supervised_text(cut.samples[0]), "abcd");
  o.truncation = Truncation::drop;
  const auto dropped = load(long_answer + kQa + "\n", o);
  EXPECT_EQ(dropped.samples.size(), 1u);
  EXPECT_EQ(dropped.stats.skipped.at("too long"), 1);
  EXPECT_EQ(dropped.stats.truncated, 0);
  // Truncation that cuts away the whole answer leaves nothing to learn: skipped.
  o.truncation = Truncation::truncate;
  o.seq_length = 21;
  EXPECT_EQ(load(long_answer, o).stats.skipped.at("too few supervised tokens"), 1);
  EXPECT_THROW(parse_truncation("cut"), kdae::UsageError);
}

TEST_F(DatasetTest, MinimumSupervisedTokensAndDedup) {
  DatasetOptions o;
  o.min_supervised_tokens = 3;  // "ok<|im_end|>" has exactly 3
  EXPECT_EQ(load(kQa + "\n", o).samples.size(), 1u);
  o.min_supervised_tokens = 4;
  EXPECT_EQ(load(kQa + "\n", o).stats.skipped.at("too few supervised tokens"), 1);
  const std::string twice = kQa + "\n" + R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})" "\n" + R"({"prompt": "hi", "response": "ok!"})" "\n";
  EXPECT_EQ(load(twice).samples.size(), 3u);
  DatasetOptions d;
  d.dedup = true;
  const auto deduped = load(twice, d);  // same rendering from two forms = same ids
  EXPECT_EQ(deduped.samples.size(), 2u);
  EXPECT_EQ(deduped.sample_lines, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(deduped.stats.skipped.at("duplicate"), 1);
}

TEST_F(DatasetTest, CacheHitGivesIdenticalSamplesAndCorruptFilesAreRebuilt) {
  DatasetOptions o;
  o.cache_dir = dir_ / "cache";
  o.dedup = true;
  const std::string text = kQa + "\n" + kQa + "\n" + R"({"prompt": "a", "response": "bc", "domain": "med", "weight": 0.5})" "\n" + R"({"text": "x"})" "\n";
  const auto same = [](const Dataset& a, const Dataset& b) {
    ASSERT_EQ(a.samples.size(), b.samples.size());
    for (size_t i = 0; i < a.samples.size(); ++i) {
      EXPECT_EQ(a.samples[i].ids, b.samples[i].ids);
      EXPECT_EQ(a.samples[i].supervised, b.samples[i].supervised);
      EXPECT_EQ(a.samples[i].domain, b.samples[i].domain);
      EXPECT_EQ(a.samples[i].weight, b.samples[i].weight);
    }
    EXPECT_EQ(a.domain_names, b.domain_names);
    EXPECT_EQ(a.sample_lines, b.sample_lines);
    EXPECT_EQ(a.chat_template, b.chat_template);
    EXPECT_EQ(a.stats.lines, b.stats.lines);
    EXPECT_EQ(a.stats.tokens, b.stats.tokens);
    EXPECT_EQ(a.stats.supervised_tokens, b.stats.supervised_tokens);
    EXPECT_EQ(a.stats.skipped, b.stats.skipped);
    EXPECT_EQ(a.stats.lengths, b.stats.lengths);
  };
  const auto first = load(text, o);
  EXPECT_FALSE(first.from_cache);
  const fs::path file = dataset_cache_file(o.cache_dir, first.fingerprint);
  ASSERT_TRUE(fs::exists(file));
  const auto second = load(text, o);
  EXPECT_TRUE(second.from_cache);
  EXPECT_EQ(second.fingerprint, first.fingerprint);
  same(first, second);

  // Every option that changes samples changes the key.
  DatasetOptions other = o;
  other.seq_length = 100;
  EXPECT_NE(load(text, other).fingerprint, first.fingerprint);
  other = o;
  other.chat_template = "zephyr";
  EXPECT_NE(load(text, other).fingerprint, first.fingerprint);
  EXPECT_NE(load(text + kQa + "\n", o).fingerprint, first.fingerprint);

  // A flipped byte, a truncated file, garbage: warned about, rebuilt, never trusted.
  const std::string good = kdae::read_file(file);
  for (const std::string& bad : {good.substr(0, good.size() / 2), std::string("junk"), std::string(),
                                 good.substr(0, 200) + char(good[200] ^ 1) + good.substr(201)}) {
    kdae::write_file_atomic(file, bad);
    const auto rebuilt = load(text, o);
    EXPECT_FALSE(rebuilt.from_cache);
    ASSERT_EQ(rebuilt.warnings.size(), 1u);
    EXPECT_NE(rebuilt.warnings[0].find(file.string()), std::string::npos);
    same(first, rebuilt);
    EXPECT_TRUE(load(text, o).from_cache);  // the rebuild rewrote a good file
  }
}

TEST(Sampler, EpochOrderIsASeededDeterministicPermutation) {
  const auto a = epoch_order(1000, 42, 0);
  EXPECT_EQ(a, epoch_order(1000, 42, 0));
  std::vector<size_t> sorted = a, identity(1000);
  std::iota(identity.begin(), identity.end(), size_t{0});
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, identity);
  EXPECT_NE(a, identity);
  EXPECT_NE(a, epoch_order(1000, 42, 1));
  EXPECT_NE(a, epoch_order(1000, 43, 0));
  EXPECT_EQ(epoch_order(1000, 42, 3, /*shuffle=*/false), identity);
  EXPECT_TRUE(epoch_order(0, 1, 0).empty());
  EXPECT_EQ(epoch_order(1, 1, 0), std::vector<size_t>{0});
  // Pinned values, computed by an independent Python transcription of splitmix64 + Fisher-Yates: the
  // order is part of the resume contract and must not change with the platform or a refactor.
  EXPECT_EQ(epoch_order(10, 42, 0), (std::vector<size_t>{9, 7, 5, 2, 4, 6, 8, 0, 3, 1}));
  EXPECT_EQ(epoch_order(10, 42, 1), (std::vector<size_t>{6, 2, 0, 4, 3, 5, 7, 1, 9, 8}));
  // Unbiased: over many epochs, each of 3 items lands first about a third of the time.
  std::vector<int> first(3, 0);
  for (int e = 0; e < 3000; ++e) ++first[epoch_order(3, 7, e)[0]];
  for (int c : first) EXPECT_NEAR(c, 1000, 120);
}

TEST(Sampler, MixedOrderReachesTheDomainTokenShare) {
  // 200 general + 100 domain samples, 5..50 supervised tokens each (a fixed spread, no RNG).
  std::vector<bool> in_domain;
  std::vector<int64_t> supervised;
  for (int i = 0; i < 300; ++i) {
    in_domain.push_back(i % 3 == 2);
    supervised.push_back(5 + (i * 37) % 46);
  }
  for (double fraction : {0.1, 0.3, 0.7}) {  // 0.7 needs every domain sample more than once
    double realised = -1;
    const auto order = mixed_epoch_order(in_domain, supervised, fraction, 9, 0, &realised);
    EXPECT_EQ(order, mixed_epoch_order(in_domain, supervised, fraction, 9, 0, nullptr));
    int64_t domain_tokens = 0, total = 0;
    std::vector<int> seen(300, 0);
    for (size_t i : order) {
      ++seen[i];
      total += supervised[i];
      if (in_domain[i]) domain_tokens += supervised[i];
    }
    const double share = static_cast<double>(domain_tokens) / static_cast<double>(total);
    EXPECT_NEAR(share, realised, 1e-12);
    EXPECT_NEAR(share, fraction, 0.01) << "fraction " << fraction;  // stated tolerance: 1 point
    for (int i = 0; i < 300; ++i) {
      if (!in_domain[i]) {
        EXPECT_EQ(seen[i], 1) << i;
      }
    }
    if (fraction == 0.7) {
      EXPECT_GT(*std::max_element(seen.begin(), seen.end()), 1);
    }
    EXPECT_NE(order, mixed_epoch_order(in_domain, supervised, fraction, 9, 1, nullptr));
  }
  EXPECT_THROW(mixed_epoch_order(in_domain, supervised, 1.0, 9, 0, nullptr), kdae::Error);
}
