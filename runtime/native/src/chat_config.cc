#include "chat_config.h"

#include <fstream>
#include <sstream>

namespace mlc {

std::string ReadFile(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ArtifactError(what + " not found: " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

Json ReadJsonFile(const std::string& path, const std::string& what) {
  std::string text = ReadFile(path, what);
  try {
    return Json::Parse(text);
  } catch (const std::runtime_error& err) {
    throw ArtifactError(what + " is not valid JSON (" + path + "): " + err.what());
  }
}

namespace {

bool KindMatches(const Json& value, const std::string& type) {
  if (type == "integer") return value.is_integer();
  if (type == "number") return value.is_number();
  if (type == "string") return value.is_string();
  if (type == "object") return value.is_object();
  if (type == "array") return value.is_array();
  if (type == "null") return value.is_null();
  if (type == "boolean") return value.is_bool();
  return false;
}

std::string Describe(const std::string& path, const char* fallback) {
  return path.empty() ? fallback : path;
}

std::string RebuildHint(const Json& config, const std::string& model_dir) {
  const Json& source = config.get("source_model");
  const Json& quantization = config.get("quantization");
  const Json& target = config.get("target");
  std::string command = "mlc build " + (source.is_string() ? source.as_string() : "<path/to/model>") +
                        " --quantization " + (quantization.is_string() ? quantization.as_string() : "CODE");
  if (target.is_string() && target.as_string() != "llvm") command += " --target " + target.as_string();
  if (!model_dir.empty()) {
    std::string parent = model_dir;
    while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
    size_t slash = parent.rfind('/');
    parent = slash == std::string::npos ? "." : slash == 0 ? "/" : parent.substr(0, slash);
    command += " -o " + parent;
  }
  return "rebuild it with: " + command;
}

}  // namespace

std::string SchemaViolation(const Json& value, const Json& schema, const std::string& path) {
  if (schema.has("anyOf")) {
    std::string kinds;
    for (const Json& alternative : schema.at("anyOf").as_array()) {
      if (SchemaViolation(value, alternative, path).empty()) return "";
      if (!kinds.empty()) kinds += " or ";
      kinds += alternative.get("type").is_string() ? alternative.get("type").as_string() : "?";
    }
    return Describe(path, "the value") + " must be " + kinds;
  }
  if (schema.has("const") && value.Dump() != schema.at("const").Dump()) {
    return path + " must be " + schema.at("const").Dump() + ", not " + value.Dump();
  }
  const Json& type = schema.get("type");
  if (type.is_string() && !KindMatches(value, type.as_string())) {
    return Describe(path, "the value") + " must be " + type.as_string() + ", not " + value.Dump();
  }
  if (value.is_array() && schema.has("items")) {
    const Json::Array& items = value.as_array();
    for (size_t i = 0; i < items.size(); ++i) {
      std::string problem = SchemaViolation(items[i], schema.at("items"), path + "[" + std::to_string(i) + "]");
      if (!problem.empty()) return problem;
    }
  }
  if (value.is_object() && type.is_string() && type.as_string() == "object") {
    std::string missing;
    if (schema.has("required")) {
      for (const Json& key : schema.at("required").as_array()) {
        if (!value.has(key.as_string())) missing += (missing.empty() ? "" : ", ") + key.as_string();
      }
    }
    if (!missing.empty()) return Describe(path, "the object") + " lacks the key(s) " + missing;
    const Json& properties = schema.get("properties");
    if (schema.get("additionalProperties").is_bool() && !schema.get("additionalProperties").as_bool()) {
      std::string unknown;
      for (const auto& [key, _] : value.as_object()) {
        if (!properties.has(key)) unknown += (unknown.empty() ? "" : ", ") + key;
      }
      if (!unknown.empty()) return Describe(path, "the object") + " has unknown key(s) " + unknown;
    }
    if (properties.is_object()) {
      for (const auto& [key, sub] : properties.as_object()) {
        if (!value.has(key)) continue;
        std::string problem = SchemaViolation(value.at(key), sub, path.empty() ? key : path + "." + key);
        if (!problem.empty()) return problem;
      }
    }
  }
  return "";
}

ChatConfig ChatConfig::Load(const std::string& model_dir) {
  std::string path = model_dir + "/mlc-chat-config.json";
  ChatConfig config;
  config.raw = ReadJsonFile(path, "chat config");
  const Json& raw = config.raw;
  std::string rebuild = mlc::RebuildHint(raw, model_dir);
  if (!raw.is_object()) throw ArtifactError(path + " must hold a JSON object");
  const Json& version = raw.get("artifact_format_version");
  if (!version.is_integer() || version.as_int() != kArtifactFormatVersion) {
    throw ArtifactError(path + " has artifact format " + version.Dump() + "; this runtime reads " +
                        std::to_string(kArtifactFormatVersion) + ": " + rebuild);
  }
  std::string schema_path = model_dir + "/mlc-chat-config.schema.json";
  Json schema;
  try {
    schema = ReadJsonFile(schema_path, "chat config schema");
  } catch (const ArtifactError& err) {
    throw ArtifactError(std::string(err.what()) + ": " + rebuild);
  }
  std::string problem = SchemaViolation(raw, schema);
  if (!problem.empty()) throw ArtifactError(path + ": " + problem + ": " + rebuild);

  config.model_type = raw.at("model_type").as_string();
  config.quantization = raw.at("quantization").as_string();
  config.model_lib = raw.at("model_lib").as_string();
  config.target = raw.at("target").as_string();
  config.source_model = raw.at("source_model").as_string();
  config.vocab_size = raw.at("vocab_size").as_int();
  config.context_window_size = raw.at("context_window_size").as_int();
  config.prefill_chunk_size = raw.at("prefill_chunk_size").as_int();
  config.temperature = raw.at("temperature").as_double();
  config.top_p = raw.at("top_p").as_double();
  config.top_k = raw.at("top_k").as_int();
  config.repetition_penalty = raw.at("repetition_penalty").as_double();
  config.max_tokens = raw.at("max_tokens").as_int();
  const Json& model_config = raw.at("model_config");
  config.hidden_size = model_config.get("hidden_size").is_integer() ? model_config.get("hidden_size").as_int() : 0;
  if (raw.at("bos_token_id").is_integer()) config.bos_token_id = static_cast<int32_t>(raw.at("bos_token_id").as_int());
  const Json& eos = raw.at("eos_token_id");
  if (eos.is_integer()) config.eos_token_ids.push_back(static_cast<int32_t>(eos.as_int()));
  if (eos.is_array()) {
    for (const Json& id : eos.as_array()) config.eos_token_ids.push_back(static_cast<int32_t>(id.as_int()));
  }
  // As runtime/compiled_model.py's _no_prefix_sharing: such models keep a sequence in one block.
  const Json& window = model_config.get("sliding_window");
  bool windowed = !(window.is_null() || (window.is_number() && window.as_double() == 0) ||
                    (window.is_bool() && !window.as_bool()));
  const Json& kv_dtype = model_config.get("kv_cache_dtype");
  bool float32_cache = kv_dtype.is_null() || (kv_dtype.is_string() && kv_dtype.as_string() == "float32");
  config.shares_prefixes = !windowed && float32_cache;
  return config;
}

std::string ChatConfig::RebuildHint(const std::string& model_dir) const {
  return mlc::RebuildHint(raw, model_dir);
}

}  // namespace mlc
