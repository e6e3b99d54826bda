#include "eval/judge.h"

#include <chrono>
#include <cmath>
#include <fstream>
#include <iomanip>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "common/error.h"

namespace kdae::eval {
namespace {

using nlohmann::json;

const char* kSingleSystem = "You are a careful and impartial judge of the answers an AI assistant gives.";
const char* kRatingAsk =
    "Write a short explanation first. Then give the rating on a scale of 1 to 10 in exactly this form: "
    "\"Rating: [[5]]\".";

std::string answer_block(const std::string& who, const std::string& field) {
  return "[The Start of " + who + "]\n{" + field + "}\n[The End of " + who + "]";
}

std::string conversation_block(bool with_reference) {
  std::string text = "[The Start of the Conversation]\n### User:\n{question_1}\n\n### Assistant:\n{answer_1}\n\n"
                     "### User:\n{question_2}\n\n### Assistant:\n{answer_2}\n[The End of the Conversation]";
  if (with_reference)
    text += "\n\n[The Start of the Reference Answers]\nFirst answer:\n{ref_answer_1}\n\nSecond answer:\n"
            "{ref_answer_2}\n[The End of the Reference Answers]";
  return text;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string turn_text(const json& answer, size_t turn) {
  const json& turns = answer["choices"][0]["turns"];
  return turn < turns.size() && turns[turn].is_string() ? turns[turn].get<std::string>() : std::string();
}

std::string format_score(const std::optional<double>& v) {
  if (!v) return "-";
  std::ostringstream out;
  out << std::fixed << std::setprecision(2) << *v;
  return out.str();
}

}  // namespace

JudgePrompts builtin_judge_prompts() {
  const std::string ask_single =
      "[Instruction]\nRate the assistant's answer to the user's question below for helpfulness, relevance, "
      "accuracy, depth and clarity. ";
  const std::string ask_math =
      "[Instruction]\nRate the assistant's answer to the user's question below. A reference answer is given: "
      "compare with it, and let correctness count most. ";
  JudgePrompts p;
  p["single-v1"] = {"single-v1", "single", kSingleSystem,
                    ask_single + kRatingAsk + "\n\n[Question]\n{question}\n\n" +
                        answer_block("Assistant's Answer", "answer"),
                    "[[rating]]"};
  p["single-math-v1"] = {"single-math-v1", "single", kSingleSystem,
                         ask_math + kRatingAsk + "\n\n[Question]\n{question}\n\n" +
                             answer_block("Reference Answer", "ref_answer_1") + "\n\n" +
                             answer_block("Assistant's Answer", "answer"),
                         "[[rating]]"};
  p["single-v1-multi-turn"] = {"single-v1-multi-turn", "single", kSingleSystem,
                               "[Instruction]\nRate the assistant's answer to the user's second question in the "
                               "conversation below for helpfulness, relevance, accuracy, depth and clarity. " +
                                   std::string(kRatingAsk) + "\n\n" + conversation_block(false),
                               "[[rating]]"};
  p["single-math-v1-multi-turn"] = {"single-math-v1-multi-turn", "single", kSingleSystem,
                                    "[Instruction]\nRate the assistant's answer to the user's second question in the "
                                    "conversation below. Reference answers are given: compare with them, and let "
                                    "correctness count most. " +
                                        std::string(kRatingAsk) + "\n\n" + conversation_block(true),
                                    "[[rating]]"};
  p["pair-v2"] = {"pair-v2", "pairwise", "You are an impartial judge comparing the answers of two AI assistants.",
                  "[Instruction]\nDecide which of the two answers below follows the user's instruction and answers "
                  "the question better. Do not let the order of the answers, their length or the assistants' names "
                  "sway you. Explain briefly, then give your verdict as exactly one of: \"[[A]]\" if assistant A is "
                  "better, \"[[B]]\" if assistant B is better, \"[[C]]\" for a tie.\n\n[User Question]\n{question}\n\n" +
                      answer_block("Assistant A's Answer", "answer_a") + "\n\n" +
                      answer_block("Assistant B's Answer", "answer_b"),
                  "[[A]]"};
  return p;
}

JudgePrompts read_judge_prompts(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot open ", path);
  JudgePrompts out;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = json::parse(line, nullptr, false);
    const std::string where = str(path, ":", number);
    for (const char* key : {"name", "type", "system_prompt", "prompt_template", "output_format"})
      if (!j.is_object() || !j.contains(key) || !j[key].is_string()) fail(where, ": needs a string \"", key, "\"");
    JudgePrompt p{j["name"], j["type"], j["system_prompt"], j["prompt_template"], j["output_format"]};
    out[p.name] = p;
  }
  if (out.empty()) fail(path, ": no judge prompts");
  return out;
}

std::string fill_template(const std::string& text, const std::map<std::string, std::string>& values) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      out += c;
      ++i;
    } else if (c == '{') {
      const size_t close = text.find('}', i);
      if (close == std::string::npos) fail("judge prompt: '{' without '}' at offset ", i);
      const std::string field = text.substr(i + 1, close - i - 1);
      auto it = values.find(field);
      if (it == values.end()) fail("judge prompt: unknown field {", field, "}");
      out += it->second;
      i = close;
    } else if (c == '}') {
      fail("judge prompt: single '}' at offset ", i, " (write '}}')");
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<double> parse_rating(const std::string& judgment) {
  static const std::regex strict(R"(\[\[(\d+\.?\d*)\]\])"), loose(R"(\[(\d+\.?\d*)\])");
  std::smatch m;
  if (std::regex_search(judgment, m, strict) || std::regex_search(judgment, m, loose)) return std::stod(m[1].str());
  return std::nullopt;
}

Verdict parse_verdict(const std::string& judgment) {
  if (judgment.find("[[A]]") != std::string::npos) return Verdict::a;
  if (judgment.find("[[B]]") != std::string::npos) return Verdict::b;
  if (judgment.find("[[C]]") != std::string::npos) return Verdict::tie;
  return Verdict::error;
}

std::vector<SingleJudgment> grade_mt_bench(JudgeBackend& judge, const JudgePrompts& prompts,
                                           const std::vector<MtBenchQuestion>& questions, const ModelAnswers& answers) {
  auto prompt_named = [&](const std::string& name) -> const JudgePrompt& {
    auto it = prompts.find(name);
    if (it == prompts.end()) fail("the judge prompts have no '", name, "'");
    return it->second;
  };
  std::vector<SingleJudgment> out;
  std::vector<std::vector<data::Message>> conversations;
  for (const auto& [model, by_question] : answers)
    for (const auto& q : questions) {
      auto found = by_question.find(q.question_id.dump());
      if (found == by_question.end()) continue;
      const json& answer = found->second;
      const bool reference = mt_bench_needs_reference(q.category) && !q.reference.empty();
      for (size_t turn = 0; turn < std::min<size_t>(q.turns.size(), 2); ++turn) {
        const std::string name = std::string(reference ? "single-math-v1" : "single-v1") + (turn ? "-multi-turn" : "");
        const JudgePrompt& p = prompt_named(name);
        std::map<std::string, std::string> v;
        if (turn == 0) {
          v = {{"question", q.turns[0]}, {"answer", turn_text(answer, 0)}};
          if (reference) v["ref_answer_1"] = q.reference[0];
        } else {
          v = {{"question_1", q.turns[0]}, {"question_2", q.turns[1]},
               {"answer_1", turn_text(answer, 0)}, {"answer_2", turn_text(answer, 1)}};
          if (reference) {
            v["ref_answer_1"] = q.reference[0];
            v["ref_answer_2"] = q.reference.size() > 1 ? q.reference[1] : "";
          }
        }
        SingleJudgment j{q.question_id, model, q.category, name, fill_template(p.prompt_template, v), "",
                         static_cast<int>(turn + 1), std::nullopt};
        conversations.push_back({{"system", p.system_prompt}, {"user", j.user_prompt}});
        out.push_back(std::move(j));
      }
    }
  const auto replies = judge.complete(conversations);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].judgment = replies[i];
    out[i].score = parse_rating(replies[i]);
  }
  return out;
}

json judgment_line(const SingleJudgment& j, const std::string& judge_name) {
  return {{"question_id", j.question_id}, {"model", j.model},
          {"judge", json::array({judge_name, j.prompt_name})},
          {"user_prompt", j.user_prompt}, {"judgment", j.judgment},
          {"score", j.score ? json(*j.score) : json(-1)}, {"turn", j.turn},
          {"tstamp", now_seconds()}};
}

MtBenchSummary summarize(const std::vector<SingleJudgment>& judgments) {
  MtBenchSummary s;
  for (const auto& j : judgments)
    for (const std::string& key : {std::string("turn ") + std::to_string(j.turn), std::string("overall"), j.category}) {
      ScoreCell& c = s.cells[j.model][key];
      if (j.score) {
        c.sum += *j.score;
        ++c.scored;
      } else {
        ++c.unparsable;
      }
    }
  return s;
}

std::string MtBenchSummary::table() const {
  std::ostringstream out;
  out << std::left << std::setw(20) << "model" << std::right << std::setw(9) << "turn 1" << std::setw(9) << "turn 2"
      << std::setw(9) << "overall" << std::setw(8) << "scored" << std::setw(12) << "unparsable" << "\n";
  for (const auto& [model, row] : cells) {
    auto cell = [&](const std::string& k) { auto it = row.find(k); return it == row.end() ? ScoreCell{} : it->second; };
    const ScoreCell all = cell("overall");
    out << std::left << std::setw(20) << model << std::right << std::setw(9) << format_score(cell("turn 1").mean())
        << std::setw(9) << format_score(cell("turn 2").mean()) << std::setw(9) << format_score(all.mean())
        << std::setw(8) << all.scored << std::setw(12) << all.unparsable << "\n";
  }
  std::set<std::string> categories;
  for (const auto& [model, row] : cells)
    for (const auto& [k, c] : row)
      if (k != "overall" && k.rfind("turn ", 0) != 0) categories.insert(k);
  out << "\n" << std::left << std::setw(14) << "category";
  for (const auto& [model, row] : cells) out << std::right << std::setw(14) << model.substr(0, 13);
  out << "\n";
  for (const auto& k : categories) {
    out << std::left << std::setw(14) << k;
    for (const auto& [model, row] : cells) {
      auto it = row.find(k);
      out << std::right << std::setw(14) << format_score(it == row.end() ? std::nullopt : it->second.mean());
    }
    out << "\n";
  }
  return out.str();
}

json MtBenchSummary::to_json() const {
  json j = json::object();
  for (const auto& [model, row] : cells)
    for (const auto& [k, c] : row)
      j[model][k] = {{"mean", c.mean() ? json(*c.mean()) : json(nullptr)}, {"scored", c.scored},
                     {"unparsable", c.unparsable}};
  return j;
}

std::vector<PairJudgment> grade_pairwise(JudgeBackend& judge, const JudgePrompt& prompt,
                                         const std::vector<json>& outputs, const std::vector<json>& reference,
                                         uint64_t seed) {
  std::map<std::string, const json*> by_instruction;
  for (const auto& r : reference) by_instruction[r["instruction"].get<std::string>()] = &r;
  std::mt19937_64 rng(seed);
  std::vector<PairJudgment> out;
  std::vector<std::vector<data::Message>> conversations;
  for (const auto& o : outputs) {
    const std::string instruction = o["instruction"];
    auto ref = by_instruction.find(instruction);
    if (ref == by_instruction.end()) continue;
    PairJudgment j{instruction, o.value("generator", std::string("model")),
                   ref->second->value("generator", std::string("reference")), (rng() & 1) != 0, "error", "", ""};
    const std::string mine = o["output"], theirs = (*ref->second)["output"];
    j.user_prompt = fill_template(prompt.prompt_template, {{"question", instruction},
                                                           {"answer_a", j.swapped ? theirs : mine},
                                                           {"answer_b", j.swapped ? mine : theirs}});
    conversations.push_back({{"system", prompt.system_prompt}, {"user", j.user_prompt}});
    out.push_back(std::move(j));
  }
  if (out.empty()) fail("no output's instruction appears in the reference outputs");
  const auto replies = judge.complete(conversations);
  for (size_t i = 0; i < out.size(); ++i) {
    PairJudgment& j = out[i];
    j.judgment = replies[i];
    const Verdict v = parse_verdict(replies[i]);
    if (v == Verdict::tie) j.winner = "tie";
    else if (v != Verdict::error) j.winner = (v == Verdict::a) != j.swapped ? "model" : "reference";
  }
  return out;
}

WinRate win_rate(const std::vector<PairJudgment>& judgments, const std::vector<json>& outputs,
                 const std::vector<json>& reference) {
  WinRate w;
  std::vector<double> points;
  for (const auto& j : judgments) {
    if (j.winner == "error") { ++w.errors; continue; }
    const double p = j.winner == "model" ? 1.0 : j.winner == "tie" ? 0.5 : 0.0;
    (p == 1.0 ? w.wins : p == 0.5 ? w.ties : w.losses)++;
    points.push_back(p);
  }
  if (!points.empty()) {
    double mean = 0, var = 0;
    for (double p : points) mean += p / static_cast<double>(points.size());
    for (double p : points) var += (p - mean) * (p - mean);
    const auto n = static_cast<double>(points.size());
    w.win_rate = 100 * mean;
    w.standard_error = n > 1 ? 100 * std::sqrt(var / (n - 1)) / std::sqrt(n) : 0;
  }
  std::map<std::string, size_t> length;
  for (const auto& r : reference) length[r["instruction"].get<std::string>()] = r["output"].get<std::string>().size();
  double mine = 0, theirs = 0;
  std::map<std::string, size_t> my_length;
  for (const auto& o : outputs) my_length[o["instruction"].get<std::string>()] = o["output"].get<std::string>().size();
  for (const auto& j : judgments) {
    mine += static_cast<double>(my_length[j.instruction]);
    theirs += static_cast<double>(length[j.instruction]);
  }
  if (!judgments.empty()) {
    w.model_length = mine / static_cast<double>(judgments.size());
    w.reference_length = theirs / static_cast<double>(judgments.size());
  }
  return w;
}

std::string WinRate::table(const std::string& model) const {
  std::ostringstream out;
  out << std::left << std::setw(20) << "model" << std::right << std::setw(10) << "win rate" << std::setw(8) << "s.e."
      << std::setw(6) << "wins" << std::setw(6) << "ties" << std::setw(8) << "losses" << std::setw(12) << "unparsable"
      << std::setw(10) << "length" << std::setw(10) << "ref len" << "\n";
  out << std::left << std::setw(20) << model << std::right << std::fixed << std::setprecision(2) << std::setw(10)
      << win_rate << std::setw(8) << standard_error << std::setw(6) << wins << std::setw(6) << ties << std::setw(8)
      << losses << std::setw(12) << errors << std::setprecision(0) << std::setw(10) << model_length << std::setw(10)
      << reference_length << "\n";
  return out.str();
}

json WinRate::to_json() const {
  return {{"win_rate", win_rate}, {"standard_error", standard_error}, {"wins", wins}, {"ties", ties},
          {"losses", losses}, {"unparsable", errors}, {"model_length", model_length},
          {"reference_length", reference_length}};
}

}  // namespace kdae::eval
