// The C API (include/mlc_runtime.h) over ChatSession: exceptions become -1 and a message.
#include "mlc_runtime.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "chat.h"

struct mlc_engine {
  std::unique_ptr<mlc::ChatSession> session;
  mutable std::string finish_reason;  // what mlc_stats.finish_reason points to
};

namespace {

thread_local std::string last_error;

// Runs `body`, turning an exception into -1 and its message.
template <typename F>
int Guard(F&& body) {
  try {
    last_error.clear();
    body();
    return 0;
  } catch (const std::exception& err) {
    last_error = err.what();
  } catch (...) {
    last_error = "unknown error";
  }
  return -1;
}

void Require(const void* pointer, const char* what) {
  if (pointer == nullptr) throw std::invalid_argument(std::string(what) + " is NULL");
}

mlc::GenerationSettings ToSettings(const mlc_engine* engine, const mlc_generation_config* config) {
  mlc::GenerationSettings settings = engine->session->DefaultSettings();
  if (config == nullptr) return settings;
  settings.sampling.temperature = config->temperature;
  settings.sampling.top_p = config->top_p;
  settings.sampling.top_k = config->top_k;
  settings.sampling.min_p = config->min_p;
  settings.sampling.repetition_penalty = config->repetition_penalty;
  settings.sampling.presence_penalty = config->presence_penalty;
  settings.sampling.frequency_penalty = config->frequency_penalty;
  settings.max_tokens = config->max_tokens;
  if (config->has_seed) settings.seed = config->seed;
  if (config->num_stop) Require(config->stop, "config->stop");
  for (size_t i = 0; i < config->num_stop; ++i) {
    Require(config->stop[i], "a stop string");
    settings.stop.emplace_back(config->stop[i]);
  }
  if (config->num_stop_token_ids) Require(config->stop_token_ids, "config->stop_token_ids");
  settings.stop_token_ids.assign(config->stop_token_ids, config->stop_token_ids + config->num_stop_token_ids);
  return settings;
}

}  // namespace

extern "C" {

mlc_engine* mlc_engine_create(const char* model_dir, const char* device) {
  mlc_engine* engine = nullptr;
  Guard([&] {
    Require(model_dir, "model_dir");
    auto made = std::make_unique<mlc_engine>();
    made->session = std::make_unique<mlc::ChatSession>(model_dir, device ? device : "cpu");
    engine = made.release();
  });
  return engine;
}

void mlc_engine_destroy(mlc_engine* engine) { delete engine; }

int mlc_generation_config_init(const mlc_engine* engine, mlc_generation_config* config) {
  return Guard([&] {
    Require(engine, "engine");
    Require(config, "config");
    mlc::GenerationSettings s = engine->session->DefaultSettings();
    *config = mlc_generation_config{};
    config->temperature = s.sampling.temperature;
    config->top_p = s.sampling.top_p;
    config->top_k = s.sampling.top_k;
    config->min_p = s.sampling.min_p;
    config->repetition_penalty = s.sampling.repetition_penalty;
    config->presence_penalty = s.sampling.presence_penalty;
    config->frequency_penalty = s.sampling.frequency_penalty;
    config->max_tokens = s.max_tokens;
  });
}

int mlc_engine_generate(mlc_engine* engine, const char* prompt, const mlc_generation_config* config,
                        mlc_stream_callback callback, void* user_data, const volatile int* cancel, char** answer) {
  return Guard([&] {
    Require(engine, "engine");
    Require(prompt, "prompt");
    mlc::GenerationSettings settings = ToSettings(engine, config);
    bool stop_asked = false;  // the callback returned nonzero
    mlc::PieceCallback on_piece = [&](const std::string& piece) {
      if (callback != nullptr && callback(piece.data(), piece.size(), user_data) != 0) stop_asked = true;
    };
    mlc::CancelCheck cancelled = [&] { return stop_asked || (cancel != nullptr && *cancel != 0); };
    std::string text = engine->session->Generate(prompt, settings, on_piece, cancelled);
    if (answer != nullptr) {
      *answer = static_cast<char*>(std::malloc(text.size() + 1));
      if (*answer == nullptr) throw std::bad_alloc();
      std::memcpy(*answer, text.c_str(), text.size() + 1);
    }
  });
}

int mlc_engine_reset(mlc_engine* engine) {
  return Guard([&] {
    Require(engine, "engine");
    engine->session->Reset();
  });
}

int mlc_engine_stats(const mlc_engine* engine, mlc_stats* stats) {
  return Guard([&] {
    Require(engine, "engine");
    Require(stats, "stats");
    const mlc::GenerationStats& s = engine->session->last_stats();
    engine->finish_reason = s.finish_reason;
    stats->prefill_tokens = s.prefill_tokens;
    stats->prefill_seconds = s.prefill_seconds;
    stats->decode_tokens = s.decode_tokens;
    stats->decode_seconds = s.decode_seconds;
    stats->time_to_first_token_seconds = s.time_to_first_token;
    stats->finish_reason = engine->finish_reason.c_str();
  });
}

int mlc_engine_last_output_ids(const mlc_engine* engine, const int32_t** ids, size_t* count) {
  return Guard([&] {
    Require(engine, "engine");
    Require(ids, "ids");
    Require(count, "count");
    const std::vector<int32_t>& out = engine->session->last_output_ids();
    *ids = out.data();
    *count = out.size();
  });
}

void mlc_string_free(char* text) { std::free(text); }

const char* mlc_last_error(void) { return last_error.c_str(); }

const char* mlc_runtime_version(void) { return MLC_VERSION; }

}  // extern "C"
