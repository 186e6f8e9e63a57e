#include "model.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "tensor_cache.h"

namespace mlc {
namespace {

namespace ffi = tvm::ffi;
using ffi::Tensor;

constexpr int64_t kPageSize = 16;
constexpr int64_t kSequenceId = 0;
// A sequence's first page is attended as a block of its own once it is full, as the Python
// runtime holds it (compiled_model.py FIRST_BLOCK_TOKENS): the logits then agree bit for bit.
constexpr int64_t kFirstBlockTokens = kPageSize;
constexpr int64_t kScratchSequenceId = int64_t{1} << 62;
constexpr int kPooledAllocator = 2;

ffi::Function Global(const char* name) {
  std::optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f) throw std::runtime_error(std::string("the TVM runtime lacks ") + name);
  return *f;
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {
    int shift = 0;
    while (!(mantissa & 0x400)) {
      mantissa <<= 1;
      ++shift;
    }
    bits = sign | ((113 - shift) << 23) | ((mantissa & 0x3FF) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// The cores this process may run on (its affinity mask), as the Python runtime counts them.
unsigned UsableCores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// runtime/artifact.py check_library_metadata: refuse a library built for other weights.
void CheckLibraryMetadata(const Json& meta, const ChatConfig& config, const TensorCacheIndex& index,
                          const std::string& model_dir, const std::string& library) {
  std::vector<std::string> problems;
  const Json& version = meta.get("artifact_format_version");
  if (!version.is_integer() || version.as_int() != kArtifactFormatVersion) {
    problems.push_back("artifact format " + version.Dump() + " (this runtime reads " +
                       std::to_string(kArtifactFormatVersion) + ")");
  }
  for (const char* key : {"model_type", "quantization"}) {
    if (meta.get(key).Dump() != config.raw.get(key).Dump()) {
      problems.push_back(std::string(key) + " " + meta.get(key).Dump() + " (the weights are " +
                         config.raw.get(key).Dump() + ")");
    }
  }
  const Json& scheme = meta.get("quantization_scheme");
  if (!scheme.is_null() && scheme.Dump() != config.raw.get("quantization_scheme").Dump()) {
    problems.push_back("another weight layout than the weights' (the quantization changed)");
  }
  if (meta.get("model_config").Dump() != config.raw.get("model_config").Dump()) {
    problems.push_back("a different model configuration than the weights");
  }
  if (problems.empty()) {
    std::vector<const TensorRecord*> records = index.Records();
    const Json& params = meta.get("params");
    size_t expected = params.is_array() ? params.as_array().size() : 0;
    std::string diff;
    for (size_t i = 0; i < std::min(expected, records.size()) && diff.empty(); ++i) {
      const Json& p = params.as_array()[i];
      std::vector<int64_t> shape;
      for (const Json& d : p.at("shape").as_array()) shape.push_back(d.as_int());
      if (p.at("name").as_string() != records[i]->name || shape != records[i]->shape ||
          p.at("dtype").as_string() != records[i]->dtype) {
        diff = p.at("name").as_string() + " " + ShapeText(shape) + " " + p.at("dtype").as_string() +
               " vs " + records[i]->name + " " + ShapeText(records[i]->shape) + " " + records[i]->dtype;
      }
    }
    if (diff.empty() && expected != records.size()) {
      diff = std::to_string(expected) + " parameters vs " + std::to_string(records.size());
    }
    if (!diff.empty()) problems.push_back("different parameters than the weights (" + diff + ")");
  }
  if (problems.empty()) return;
  std::string joined;
  for (const std::string& p : problems) joined += (joined.empty() ? "" : "; ") + p;
  throw ArtifactError("The library " + library + " does not match the model in " + model_dir +
                      ": it was built for " + joined +
                      ". The library and the weights must come from the same build; " +
                      config.RebuildHint(model_dir));
}

}  // namespace

// Tensors through the TVM runtime's registered functions (the wheel ships no headers for its
// C++ tensor class): memory comes from the device's allocator, as the library expects.
struct TensorOps {
  ffi::Function alloc = Global("runtime.TVMTensorAllocWithScope");
  ffi::Function copy_from = Global("runtime.TVMTensorCopyFromBytes");
  ffi::Function copy_to = Global("runtime.TVMTensorCopyToBytes");
  ffi::Function view = Global("runtime.TVMTensorCreateView");

  Tensor Empty(const std::vector<int64_t>& shape, DLDataType dtype, DLDevice device) const {
    return alloc(ffi::Shape(shape), dtype, device, ffi::Optional<ffi::String>()).cast<Tensor>();
  }
  void CopyFrom(const Tensor& tensor, const void* data, size_t nbytes) const {
    copy_from(tensor, const_cast<void*>(data), static_cast<int64_t>(nbytes));
  }
  void CopyTo(const Tensor& tensor, void* data, size_t nbytes) const {
    copy_to(tensor, data, static_cast<int64_t>(nbytes));
  }
  Tensor View(const Tensor& tensor, const std::vector<int64_t>& shape) const {
    return view(tensor, ffi::Shape(shape), tensor.dtype(), int64_t{0}).cast<Tensor>();
  }
};

struct Model::Impl {
  TensorOps ops;
  ChatConfig config;
  DLDevice device{kDLCPU, 0};
  std::optional<ffi::Module> vm;
  ffi::Array<Tensor> params;
  ffi::Any kv_cache;
  ffi::Function embed, prefill, decode;
  ffi::Function kv_add, kv_remove, kv_fork, kv_begin, kv_end;
  int64_t num_cached = 0;
  int64_t kv_length = 0;  // tokens of the sequence in the cache (the first-block rule)

  Tensor Int32Tensor(const std::vector<int32_t>& values) {
    Tensor out = ops.Empty({static_cast<int64_t>(values.size())}, DLDataType{kDLInt, 32, 1}, device);
    ops.CopyFrom(out, values.data(), values.size() * sizeof(int32_t));
    return out;
  }

  // The compiled lookup does no bounds check: an id outside the vocabulary would crash.
  Tensor IdTensor(const std::vector<int32_t>& ids) {
    for (int32_t id : ids) {
      if (id < 0 || id >= config.vocab_size) {
        throw std::invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                    std::to_string(config.vocab_size) +
                                    "; does the tokenizer belong to this model?");
      }
    }
    return Int32Tensor(ids);
  }

  Tensor Embed(const std::vector<int32_t>& ids) {
    Tensor embedded = embed(IdTensor(ids), params).cast<Tensor>();
    int64_t hidden = embedded.size(embedded.ndim() - 1);
    return ops.View(embedded, {1, static_cast<int64_t>(ids.size()), hidden});
  }

  void Begin(int64_t length) {
    kv_begin(kv_cache, ffi::Shape({kSequenceId}), ffi::Shape({length}));
  }

  void Appended(int64_t length) {
    int64_t before = kv_length;
    kv_length += length;
    if (config.shares_prefixes && before < kFirstBlockTokens && kFirstBlockTokens <= kv_length) {
      kv_fork(kv_cache, kSequenceId, kScratchSequenceId, kFirstBlockTokens);
      kv_remove(kv_cache, kScratchSequenceId);
    }
    num_cached += length;
  }

  std::vector<float> Logits(const ffi::Any& result) {
    ffi::Array<ffi::Any> outputs = result.cast<ffi::Array<ffi::Any>>();
    Tensor logits = outputs[0].cast<Tensor>();
    kv_cache = outputs[1];
    std::vector<float> out(static_cast<size_t>(logits.numel()));
    DLDataType dtype = logits.dtype();
    if (dtype.code == kDLFloat && dtype.bits == 32) {
      ops.CopyTo(logits, out.data(), out.size() * sizeof(float));
    } else if (dtype.code == kDLFloat && dtype.bits == 16) {
      std::vector<uint16_t> half(out.size());
      ops.CopyTo(logits, half.data(), half.size() * sizeof(uint16_t));
      for (size_t i = 0; i < half.size(); ++i) out[i] = HalfToFloat(half[i]);
    } else {
      throw std::runtime_error("logits of dtype " + std::string(ffi::DLDataTypeToString(dtype)) +
                               " are not supported");
    }
    return out;
  }
};

Model::Model(const std::string& model_dir, const std::string& device, bool verify_weights)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  if (device != "cpu" && device != "llvm") {
    throw std::invalid_argument("unknown device '" + device + "': this runtime runs CPU builds (--device cpu)");
  }
  // TVM sizes its thread pool once, from TVM_NUM_THREADS or its own guess: every core we may use.
  setenv("TVM_NUM_THREADS", std::to_string(UsableCores()).c_str(), 0);
  if (!std::filesystem::is_directory(model_dir)) {
    throw ArtifactError("model directory not found: " + model_dir + " (build one with `mlc build`)");
  }
  m.config = ChatConfig::Load(model_dir);
  std::string rebuild = m.config.RebuildHint(model_dir);
  // CPU builds: `llvm` (the machine that built it) and `arm64` (64-bit ARM, cross-compiled).
#if defined(__aarch64__)
  const bool runs_here = m.config.target == "arm64" || m.config.target == "llvm";
  const char* fix = "build the model with `mlc build --target arm64` to run it on this CPU";
#else
  const bool runs_here = m.config.target == "llvm";
  const char* fix = m.config.target == "arm64"
                        ? "it runs on 64-bit ARM (or under qemu-aarch64); build it without --target to run it here"
                        : "build the model with `mlc build` for the default target (llvm) to run it here";
#endif
  if (!runs_here) {
    throw ArtifactError(m.config.model_lib + " was built for target '" + m.config.target +
                        "' and cannot run on this CPU: " + fix);
  }
  std::string library = model_dir + "/" + m.config.model_lib;
  if (!std::filesystem::is_regular_file(library)) {
    throw ArtifactError("model library not found: " + library + "; " + rebuild);
  }
  TensorCacheIndex index = TensorCacheIndex::Load(model_dir, rebuild);
  Json metadata;
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(library);
    m.vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    (*m.vm)->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, kPooledAllocator);
    std::string meta_text = (*m.vm)->GetFunction("_metadata").value()().cast<ffi::String>();
    metadata = Json::Parse(meta_text);
  } catch (const std::exception& err) {
    throw ArtifactError(library + " is not a model library this runtime can load (" + err.what() + "); " + rebuild);
  }
  CheckLibraryMetadata(metadata, m.config, index, model_dir, m.config.model_lib);
  std::vector<Tensor> params;
  for (const Shard& shard : index.shards) {
    std::string data = ReadShard(model_dir, shard, verify_weights, rebuild);
    for (const TensorRecord& record : shard.records) {
      Tensor tensor = m.ops.Empty(record.shape, ffi::StringToDLDataType(record.dtype), m.device);
      m.ops.CopyFrom(tensor, data.data() + record.byte_offset, static_cast<size_t>(record.nbytes));
      params.push_back(tensor);
    }
  }
  m.params = ffi::Array<Tensor>(params.begin(), params.end());
  auto function = [&](const char* name) { return (*m.vm)->GetFunction(name).value(); };
  m.embed = function("embed");
  m.prefill = function("prefill");
  m.decode = function("decode");
  m.kv_add = Global("vm.builtin.kv_state_add_sequence");
  m.kv_remove = Global("vm.builtin.kv_state_remove_sequence");
  m.kv_fork = Global("vm.builtin.kv_state_fork_sequence");
  m.kv_begin = Global("vm.builtin.kv_state_begin_forward");
  m.kv_end = Global("vm.builtin.kv_state_end_forward");
  m.kv_cache = function("create_paged_kv_cache")(
      ffi::Shape({1}), ffi::Shape({m.config.context_window_size}), ffi::Shape({m.config.prefill_chunk_size}),
      ffi::Shape({kPageSize}), ffi::Shape({0}));
  m.kv_add(m.kv_cache, kSequenceId);
}

Model::~Model() = default;

const ChatConfig& Model::config() const { return impl_->config; }
int64_t Model::num_cached_tokens() const { return impl_->num_cached; }
int64_t Model::context_window_size() const { return impl_->config.context_window_size; }

void Model::CheckFits(int64_t num_new, bool fresh) const {
  int64_t cached = fresh ? 0 : impl_->num_cached;
  int64_t total = cached + num_new;
  if (total > impl_->config.context_window_size) {
    throw ContextWindowExceeded("the conversation needs " + std::to_string(total) + " tokens (" +
                                std::to_string(cached) + " already in context + " + std::to_string(num_new) +
                                " new) but the context window is " +
                                std::to_string(impl_->config.context_window_size) +
                                "; shorten the prompt or reset the chat");
  }
}

void Model::Reset() {
  Impl& m = *impl_;
  if (m.kv_length) {
    m.kv_remove(m.kv_cache, kSequenceId);
    m.kv_add(m.kv_cache, kSequenceId);
  }
  m.kv_length = 0;
  m.num_cached = 0;
}

std::vector<float> Model::Prefill(const std::vector<int32_t>& ids) {
  Impl& m = *impl_;
  if (ids.empty()) throw std::invalid_argument("prefill needs at least one token");
  CheckFits(static_cast<int64_t>(ids.size()));
  std::vector<float> logits;
  const size_t chunk_size = static_cast<size_t>(m.config.prefill_chunk_size);
  for (size_t start = 0; start < ids.size(); start += chunk_size) {
    std::vector<int32_t> chunk(ids.begin() + start, ids.begin() + std::min(ids.size(), start + chunk_size));
    Tensor embedded = m.Embed(chunk);
    Tensor position = m.Int32Tensor({static_cast<int32_t>(chunk.size() - 1)});
    m.Begin(static_cast<int64_t>(chunk.size()));
    ffi::Any result = m.prefill(embedded, position, m.kv_cache, m.params);
    m.kv_end(m.kv_cache);
    m.Appended(static_cast<int64_t>(chunk.size()));
    if (start + chunk.size() == ids.size()) logits = m.Logits(result);
  }
  return logits;
}

std::vector<float> Model::Decode(int32_t id) {
  Impl& m = *impl_;
  CheckFits(1);
  Tensor embedded = m.Embed({id});
  m.Begin(1);
  ffi::Any result = m.decode(embedded, m.kv_cache, m.params);
  m.kv_end(m.kv_cache);
  m.Appended(1);
  return m.Logits(result);
}

}  // namespace mlc
