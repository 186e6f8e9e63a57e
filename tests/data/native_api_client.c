/* A client of the native runtime's C API that includes nothing of ours but mlc_runtime.h:
 * streams a greedy answer, stops one from the stream callback, cancels one with the flag, and
 * prints what happened as one JSON object. Usage: native_api_client MODEL_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlc_runtime.h"

typedef struct {
  char text[65536];
  size_t length;
  int pieces;
  int stop_at;              /* the callback returns nonzero at this piece (0: never) */
  int flag_at;              /* the callback sets *flag at this piece (0: never) */
  volatile int* flag;
} Stream;

static int on_piece(const char* piece, size_t length, void* user_data) {
  Stream* s = (Stream*)user_data;
  if (s->length + length < sizeof(s->text)) {
    memcpy(s->text + s->length, piece, length);
    s->length += length;
    s->text[s->length] = '\0';
  }
  s->pieces += 1;
  if (s->flag_at && s->pieces == s->flag_at) *s->flag = 1;
  return s->stop_at && s->pieces == s->stop_at;
}

static void print_json_string(const char* text) {
  putchar('"');
  for (const unsigned char* c = (const unsigned char*)text; *c; ++c) {
    if (*c == '"' || *c == '\\') printf("\\%c", *c);
    else if (*c < 0x20) printf("\\u%04x", *c);
    else putchar(*c);
  }
  putchar('"');
}

static int fail(const char* what) {
  fprintf(stderr, "%s: %s\n", what, mlc_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  mlc_engine* engine = mlc_engine_create(argv[1], "cpu");
  if (!engine) return fail("create");
  mlc_generation_config config;
  if (mlc_generation_config_init(engine, &config)) return fail("config");
  config.temperature = 0;
  config.max_tokens = 24;
  mlc_stats stats;

  static Stream whole, stopped, flagged;
  char* answer = NULL;
  if (mlc_engine_generate(engine, "Hello there", &config, on_piece, &whole, NULL, &answer)) return fail("generate");
  printf("{\"streamed\": ");
  print_json_string(whole.text);
  printf(", \"answer\": ");
  print_json_string(answer);
  mlc_string_free(answer);

  if (mlc_engine_reset(engine)) return fail("reset");
  stopped.stop_at = 3;
  if (mlc_engine_generate(engine, "Hello there", &config, on_piece, &stopped, NULL, NULL)) return fail("generate");
  if (mlc_engine_stats(engine, &stats)) return fail("stats");
  printf(", \"stopped_by_callback\": {\"finish_reason\": \"%s\", \"pieces\": %d}", stats.finish_reason,
         stopped.pieces);

  volatile int flag = 0;
  if (mlc_engine_reset(engine)) return fail("reset");
  flagged.flag_at = 2;
  flagged.flag = &flag;
  if (mlc_engine_generate(engine, "Hello there", &config, on_piece, &flagged, &flag, NULL)) return fail("generate");
  if (mlc_engine_stats(engine, &stats)) return fail("stats");
  printf(", \"cancelled_by_flag\": {\"finish_reason\": \"%s\", \"decode_tokens\": %lld}", stats.finish_reason,
         (long long)stats.decode_tokens);

  int status = mlc_engine_generate(engine, NULL, &config, NULL, NULL, NULL, NULL);
  printf(", \"bad_prompt_status\": %d, \"bad_prompt_error\": ", status);
  print_json_string(mlc_last_error());
  printf(", \"version\": ");
  print_json_string(mlc_runtime_version());
  printf("}\n");
  mlc_engine_destroy(engine);
  return 0;
}
