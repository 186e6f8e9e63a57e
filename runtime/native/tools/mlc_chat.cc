// mlc-chat: answer prompts with a build, through the C API only (include/mlc_runtime.h).
// Prints only the answer on stdout (each turn's answer, then a newline); errors go to stderr
// with a non-zero exit status.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mlc_runtime.h"

namespace {

const char kUsage[] =
    "usage: mlc-chat --model DIR --prompt TEXT [--prompt TEXT ...] [options]\n"
    "\n"
    "Each --prompt is the next user turn of one conversation.\n"
    "  --device cpu              where to run (default cpu)\n"
    "  --temperature T           0 is greedy (default: the model's)\n"
    "  --top-p P  --top-k K  --min-p P\n"
    "  --repetition-penalty R  --presence-penalty P  --frequency-penalty F\n"
    "  --max-tokens N            answer length limit (default: the model's)\n"
    "  --seed S                  sample reproducibly\n"
    "  --stop TEXT               a stop string (repeatable)\n"
    "  --json                    one JSON line per turn: answer, token ids, statistics\n"
    "  --stats                   statistics on stderr after each answer\n";

void Usage(const char* problem) {
  std::fprintf(stderr, "mlc-chat: %s\n\n%s", problem, kUsage);
  std::exit(2);
}

double Number(const char* flag, const char* text) {
  char* end = nullptr;
  double value = std::strtod(text, &end);
  if (end == text || *end != '\0') Usage((std::string(flag) + " takes a number, not '" + text + "'").c_str());
  return value;
}

long long Integer(const char* flag, const char* text) {
  char* end = nullptr;
  long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0') Usage((std::string(flag) + " takes an integer, not '" + text + "'").c_str());
  return value;
}

std::string Quote(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

int Fail(const char* what) {
  std::fprintf(stderr, "mlc-chat: %s\n", what);
  return 1;
}

int Print(const char* piece, size_t length, void*) {
  std::fwrite(piece, 1, length, stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* model = nullptr;
  const char* device = "cpu";
  std::vector<const char*> prompts, stops;
  bool json = false, stats = false;
  struct Setting {
    const char* flag;
    const char* value;
  };
  std::vector<Setting> settings;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (flag == "--json") {
      json = true;
      continue;
    }
    if (flag == "--stats") {
      stats = true;
      continue;
    }
    if (i + 1 >= argc) Usage((flag + " needs a value").c_str());
    const char* value = argv[++i];
    if (flag == "--model") model = value;
    else if (flag == "--device") device = value;
    else if (flag == "--prompt") prompts.push_back(value);
    else if (flag == "--stop") stops.push_back(value);
    else if (flag == "--temperature" || flag == "--top-p" || flag == "--top-k" || flag == "--min-p" ||
             flag == "--repetition-penalty" || flag == "--presence-penalty" || flag == "--frequency-penalty" ||
             flag == "--max-tokens" || flag == "--seed") settings.push_back({argv[i - 1], value});
    else Usage(("unknown option " + flag).c_str());
  }
  if (model == nullptr) Usage("--model is required");
  if (prompts.empty()) Usage("--prompt is required");

  mlc_engine* engine = mlc_engine_create(model, device);
  if (engine == nullptr) return Fail(mlc_last_error());
  mlc_generation_config config;
  if (mlc_generation_config_init(engine, &config) != 0) return Fail(mlc_last_error());
  for (const Setting& s : settings) {
    std::string flag = s.flag;
    if (flag == "--temperature") config.temperature = Number(s.flag, s.value);
    else if (flag == "--top-p") config.top_p = Number(s.flag, s.value);
    else if (flag == "--top-k") config.top_k = Integer(s.flag, s.value);
    else if (flag == "--min-p") config.min_p = Number(s.flag, s.value);
    else if (flag == "--repetition-penalty") config.repetition_penalty = Number(s.flag, s.value);
    else if (flag == "--presence-penalty") config.presence_penalty = Number(s.flag, s.value);
    else if (flag == "--frequency-penalty") config.frequency_penalty = Number(s.flag, s.value);
    else if (flag == "--max-tokens") config.max_tokens = Integer(s.flag, s.value);
    else if (flag == "--seed") {
      config.has_seed = 1;
      config.seed = static_cast<uint64_t>(Integer(s.flag, s.value));
    }
  }
  config.stop = stops.data();
  config.num_stop = stops.size();

  int status = 0;
  for (const char* prompt : prompts) {
    char* answer = nullptr;
    if (mlc_engine_generate(engine, prompt, &config, json ? nullptr : Print, nullptr, nullptr, &answer) != 0) {
      status = Fail(mlc_last_error());
      break;
    }
    mlc_stats s;
    mlc_engine_stats(engine, &s);
    if (json) {
      const int32_t* ids = nullptr;
      size_t count = 0;
      mlc_engine_last_output_ids(engine, &ids, &count);
      std::string line = "{\"answer\": " + Quote(answer) + ", \"ids\": [";
      for (size_t k = 0; k < count; ++k) line += (k ? ", " : "") + std::to_string(ids[k]);
      char numbers[512];
      std::snprintf(numbers, sizeof(numbers),
                    "], \"finish_reason\": \"%s\", \"prefill_tokens\": %lld, \"prefill_seconds\": %.6f, "
                    "\"decode_tokens\": %lld, \"decode_seconds\": %.6f, \"time_to_first_token_seconds\": %.6f}",
                    s.finish_reason, static_cast<long long>(s.prefill_tokens), s.prefill_seconds,
                    static_cast<long long>(s.decode_tokens), s.decode_seconds, s.time_to_first_token_seconds);
      std::printf("%s%s\n", line.c_str(), numbers);
    } else {
      std::printf("\n");
    }
    std::fflush(stdout);
    if (stats) {
      std::fprintf(stderr, "prefill: %.1f tok/s (%lld tokens), decode: %.1f tok/s (%lld tokens), first token after %.3f s\n",
                   s.prefill_seconds > 0 ? s.prefill_tokens / s.prefill_seconds : 0.0,
                   static_cast<long long>(s.prefill_tokens),
                   s.decode_seconds > 0 ? s.decode_tokens / s.decode_seconds : 0.0,
                   static_cast<long long>(s.decode_tokens), s.time_to_first_token_seconds);
    }
    mlc_string_free(answer);
  }
  mlc_engine_destroy(engine);
  return status;
}
