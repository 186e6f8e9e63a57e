/*
 * mlc_runtime.h: the native runtime's C API. Load a build made by `mlc build` (its library,
 * weights, mlc-chat-config.json, tokenizer.json and chat-format.json) and chat with it.
 *
 * Plain C, no C++ types: Swift, Kotlin/JNI and others bind it directly. Every function that
 * can fail returns 0 on success and -1 on failure; mlc_last_error() then says why (a message
 * naming the problem and its fix, valid until the next call on the same thread). An engine is
 * used from one thread at a time; `cancel` may be set from any thread.
 */
#ifndef MLC_RUNTIME_H_
#define MLC_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define MLC_API __declspec(dllexport)
#else
#define MLC_API __attribute__((visibility("default")))
#endif

typedef struct mlc_engine mlc_engine;

/* How to sample one answer. Fill it with mlc_generation_config_init (the model's defaults),
 * then change what you need. */
typedef struct {
  double temperature;        /* 0: greedy */
  double top_p;              /* in (0, 1] */
  int64_t top_k;             /* 0: off */
  double min_p;              /* in [0, 1] */
  double repetition_penalty; /* over the prompt and the answer; 1: off */
  double presence_penalty;   /* over the answer, as in the OpenAI API */
  double frequency_penalty;
  int64_t max_tokens;
  int has_seed; /* nonzero: sample reproducibly from `seed` */
  uint64_t seed;
  const char* const* stop; /* stop strings (UTF-8), beside the model's own */
  size_t num_stop;
  const int32_t* stop_token_ids; /* beside the model's end-of-sequence tokens */
  size_t num_stop_token_ids;
} mlc_generation_config;

typedef struct {
  int64_t prefill_tokens;
  double prefill_seconds;
  int64_t decode_tokens;
  double decode_seconds;
  double time_to_first_token_seconds; /* from the generate call to the first streamed text */
  const char* finish_reason;          /* "stop", "length", "interrupted"; valid until the next call */
} mlc_stats;

/* Called with each new piece of the answer (UTF-8, never half a character). Return 0 to go on,
 * nonzero to cancel (the answer ends after the current token, finish reason "interrupted"). */
typedef int (*mlc_stream_callback)(const char* piece, size_t length, void* user_data);

/* The engine for the build in `model_dir` on `device` ("cpu"); NULL on failure. */
MLC_API mlc_engine* mlc_engine_create(const char* model_dir, const char* device);
MLC_API void mlc_engine_destroy(mlc_engine* engine);

MLC_API int mlc_generation_config_init(const mlc_engine* engine, mlc_generation_config* config);

/* Answer `prompt` as the next turn of the conversation. `config` may be NULL (the model's
 * defaults), `callback` NULL, `cancel` NULL (else: nonzero cancels). On success *answer (if
 * not NULL) receives the whole answer, to be freed with mlc_string_free. */
MLC_API int mlc_engine_generate(mlc_engine* engine, const char* prompt, const mlc_generation_config* config,
                                mlc_stream_callback callback, void* user_data, const volatile int* cancel,
                                char** answer);

/* Start a new conversation. */
MLC_API int mlc_engine_reset(mlc_engine* engine);

/* The statistics of the last answer. */
MLC_API int mlc_engine_stats(const mlc_engine* engine, mlc_stats* stats);

/* The token ids of the last answer (valid until the next call on the engine). */
MLC_API int mlc_engine_last_output_ids(const mlc_engine* engine, const int32_t** ids, size_t* count);

MLC_API void mlc_string_free(char* text);

/* Why the last failed call on this thread failed ("" if none did). */
MLC_API const char* mlc_last_error(void);

/* The mlc version this runtime was built from. */
MLC_API const char* mlc_runtime_version(void);

#ifdef __cplusplus
}
#endif

#endif /* MLC_RUNTIME_H_ */
