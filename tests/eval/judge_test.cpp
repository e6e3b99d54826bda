#include "eval/judge.h"

#include <gtest/gtest.h>

#include <cmath>

#include "common/error.h"

using namespace kdae::eval;
using nlohmann::json;

namespace {

// Answers every conversation with a scripted reply and keeps what it was asked.
class ScriptedJudge : public JudgeBackend {
 public:
  explicit ScriptedJudge(std::vector<std::string> replies) : replies_(std::move(replies)) {}
  std::string name() const override { return "scripted"; }
  std::vector<std::string> complete(const std::vector<std::vector<kdae::data::Message>>& conversations) override {
    asked = conversations;
    std::vector<std::string> out;
    for (size_t i = 0; i < conversations.size(); ++i) out.push_back(replies_[i % replies_.size()]);
    return out;
  }
  std::vector<std::vector<kdae::data::Message>> asked;

 private:
  std::vector<std::string> replies_;
};

json answer(int id, std::vector<std::string> turns) { return mt_bench_answer(id, "m", turns); }

}  // namespace

TEST(Judge, RatingsParseAsFastChatDoesAndOnlyThen) {
  EXPECT_EQ(parse_rating("Good answer. Rating: [[8]]"), 8.0);
  EXPECT_EQ(parse_rating("Rating: [[7.5]] and later [[2]]"), 7.5);  // the first one
  EXPECT_EQ(parse_rating("Rating: [6]"), 6.0);                      // FastChat's backup pattern
  EXPECT_FALSE(parse_rating("I would give it eight out of ten").has_value());
  EXPECT_FALSE(parse_rating("[[eight]]").has_value());
  EXPECT_EQ(parse_verdict("so [[B]]"), Verdict::b);
  EXPECT_EQ(parse_verdict("[[C]]"), Verdict::tie);
  EXPECT_EQ(parse_verdict("A is better"), Verdict::error);
}

TEST(Judge, TemplatesFillNamedFieldsAndRejectUnknownOnes) {
  EXPECT_EQ(fill_template("Q: {question} {{json}}", {{"question", "why {x}?"}}), "Q: why {x}? {json}");
  EXPECT_THROW(fill_template("{question} {answer}", {{"question", "q"}}), kdae::Error);
  EXPECT_THROW(fill_template("a } b", {}), kdae::Error);
  for (const auto& [name, p] : builtin_judge_prompts()) EXPECT_EQ(p.name, name);
}

TEST(Judge, MtBenchPicksTheReferencePromptAndCountsUnparsable) {
  const std::vector<MtBenchQuestion> questions = {{1, "writing", {"w1", "w2"}, {}},
                                                  {2, "math", {"m1", "m2"}, {"r1", "r2"}}};
  ModelAnswers answers;
  answers["m"]["1"] = answer(1, {"a1", "a2"});
  answers["m"]["2"] = answer(2, {"b1", "b2"});
  ScriptedJudge judge({"Rating: [[9]]", "no idea", "[[4]]", "[[5]]"});
  const auto j = grade_mt_bench(judge, builtin_judge_prompts(), questions, answers);
  ASSERT_EQ(j.size(), 4u);
  EXPECT_EQ(j[0].prompt_name, "single-v1");
  EXPECT_EQ(j[1].prompt_name, "single-v1-multi-turn");
  EXPECT_EQ(j[2].prompt_name, "single-math-v1");
  EXPECT_EQ(j[3].prompt_name, "single-math-v1-multi-turn");
  EXPECT_NE(j[2].user_prompt.find("r1"), std::string::npos);
  EXPECT_NE(j[3].user_prompt.find("b2"), std::string::npos);
  EXPECT_EQ(judge.asked[0][0].role, "system");
  EXPECT_FALSE(j[1].score.has_value());
  EXPECT_EQ(judgment_line(j[1], "scripted")["score"], -1);

  const auto s = summarize(j);
  const ScoreCell overall = s.cells.at("m").at("overall");
  EXPECT_EQ(overall.scored, 3);
  EXPECT_EQ(overall.unparsable, 1);
  EXPECT_DOUBLE_EQ(*overall.mean(), (9.0 + 4 + 5) / 3);
  EXPECT_DOUBLE_EQ(*s.cells.at("m").at("turn 2").mean(), 5.0);  // the unparsable turn-2 judgment is not a score
  EXPECT_DOUBLE_EQ(*s.cells.at("m").at("math").mean(), 4.5);
}

TEST(Judge, PairwiseMapsTheDrawnOrderBackAndComputesTheWinRate) {
  std::vector<json> outputs, reference;
  for (int i = 0; i < 40; ++i) {
    outputs.push_back({{"instruction", "q" + std::to_string(i)}, {"output", "mine"}, {"generator", "m"}});
    reference.push_back({{"instruction", "q" + std::to_string(i)}, {"output", "theirs!"}, {"generator", "ref"}});
  }
  ScriptedJudge always_a({"[[A]]"});
  const auto j = grade_pairwise(always_a, builtin_judge_prompts().at("pair-v2"), outputs, reference, 3);
  int64_t model_first = 0;
  for (const auto& x : j) {
    EXPECT_EQ(x.winner, x.swapped ? "reference" : "model");  // A is whoever was shown first
    model_first += x.swapped ? 0 : 1;
  }
  EXPECT_GT(model_first, 5);
  EXPECT_LT(model_first, 35);  // the order is drawn per item

  ScriptedJudge mixed({"[[A]]", "[[C]]", "?", "[[B]]"});
  const auto m = grade_pairwise(mixed, builtin_judge_prompts().at("pair-v2"), outputs, reference, 3);
  std::vector<double> points;
  for (const auto& x : m)
    if (x.winner != "error") points.push_back(x.winner == "model" ? 1 : x.winner == "tie" ? 0.5 : 0);
  double mean = 0, var = 0;
  for (double p : points) mean += p / points.size();
  for (double p : points) var += (p - mean) * (p - mean) / (points.size() - 1);
  const WinRate w = win_rate(m, outputs, reference);
  EXPECT_EQ(w.errors, 10);
  EXPECT_EQ(w.ties, 10);
  EXPECT_EQ(w.wins + w.losses, 20);
  EXPECT_NEAR(w.win_rate, 100 * mean, 1e-9);
  EXPECT_NEAR(w.standard_error, 100 * std::sqrt(var / points.size()), 1e-9);
  EXPECT_DOUBLE_EQ(w.model_length, 4);
  EXPECT_DOUBLE_EQ(w.reference_length, 7);
}
