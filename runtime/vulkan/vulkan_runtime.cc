// Vulkan for the apache-tvm wheel's runtime, which ships none: a TVM device API plus a loader
// for the SPIR-V kernels of mlc's `vulkan` builds (written by targets/vulkan.py).
//
// Registers
//   device_api.vulkan                       memory, copies and synchronisation (DeviceAPI)
//   ffi.Module.load_from_bytes.mlc_vulkan   the library's device module: a JSON manifest and one
//                                           clspv SPIR-V module per kernel
//   mlc.vulkan.status                       why no Vulkan device is usable ("" when one is)
//
// Choices, made for a small runtime:
//   * Every buffer is host-visible, host-coherent memory, mapped for its whole life, and copies
//     to, from and between buffers are the host's memcpy. Right for CPU Vulkan devices (Mesa's
//     llvmpipe) and integrated GPUs; a discrete GPU would read all of it over PCIe.
//   * Kernel launches are recorded into one command buffer, a barrier after each, and submitted
//     only when the host needs their effects: before any copy, on StreamSync and when the
//     batch's descriptor pool is full. A buffer freed while a batch may use it dies after it.
//   * One queue per device and no streams: TVM's stream handles are ignored.
//   * The instance and devices live as long as the process (never destroyed at exit, as TVM's
//     own device APIs), so a module freed late at exit still finds its device.

#include <tvm/ffi/cast.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/device_api.h>
#include <vulkan/vulkan.h>

#include <array>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

// From the wheel's src/ (not its include/): TVM's pool behind TVMBackendAllocWorkspace, which
// turns the alloc/free pairs of every kernel-launching host function into free-list hits.
#include "runtime/workspace_pool.h"

namespace mlc_vulkan {

namespace ffi = tvm::ffi;
namespace json = tvm::ffi::json;
using tvm::runtime::DeviceAPI;

// The layout targets/vulkan.py writes (MANIFEST_FORMAT there).
constexpr int64_t kManifestFormat = 1;
// Dispatches per submitted batch, bounded by the descriptor pool.
constexpr uint32_t kSetsPerBatch = 1024;
constexpr uint32_t kBuffersPerBatch = 16 * kSetsPerBatch;

#define VK_CHECK(call)                                                                    \
  do {                                                                                    \
    VkResult result_ = (call);                                                            \
    if (result_ != VK_SUCCESS) {                                                          \
      TVM_FFI_THROW(RuntimeError) << "Vulkan: " #call " failed: " << ResultName(result_); \
    }                                                                                     \
  } while (0)

std::string ResultName(VkResult result) {
  switch (result) {
    case VK_ERROR_OUT_OF_HOST_MEMORY:
      return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
      return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED:
      return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST:
      return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_FEATURE_NOT_PRESENT:
      return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER:
      return "VK_ERROR_INCOMPATIBLE_DRIVER (no Vulkan driver is installed)";
    default:
      return "VkResult " + std::to_string(static_cast<int>(result));
  }
}

// What our device pointers point to. TVM does no arithmetic on them (offsets reach kernels as
// arguments, see SupportsDevicePointerArithmeticsOnHost), so a pointer is always a whole buffer.
struct Buffer {
  VkBuffer buffer = VK_NULL_HANDLE;
  VkDeviceMemory memory = VK_NULL_HANDLE;
  char* host = nullptr;
};

// The Vulkan instance and its devices, created on first use.
struct Instance {
  VkInstance instance = VK_NULL_HANDLE;
  std::vector<VkPhysicalDevice> physical;
  std::string error;  // why there is no device to use

  static Instance& Get() {
    static Instance* inst = new Instance();
    return *inst;
  }

 private:
  Instance() {
    VkApplicationInfo app{VK_STRUCTURE_TYPE_APPLICATION_INFO};
    app.pApplicationName = "mlc";
    app.apiVersion = VK_API_VERSION_1_2;  // for the 1.1/1.2 features the kernels use
    VkInstanceCreateInfo info{VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO};
    info.pApplicationInfo = &app;
    VkResult result = vkCreateInstance(&info, nullptr, &instance);
    if (result != VK_SUCCESS) {
      error = "vkCreateInstance failed: " + ResultName(result);
      return;
    }
    uint32_t count = 0;
    vkEnumeratePhysicalDevices(instance, &count, nullptr);
    physical.resize(count);
    vkEnumeratePhysicalDevices(instance, &count, physical.data());
    if (count == 0) error = "the Vulkan loader found no device";
  }
};

// One Vulkan device: its queue, its memory and the batch of dispatches being recorded.
class VulkanDevice {
 public:
  VkPhysicalDevice physical;
  VkDevice device;
  VkPhysicalDeviceProperties props;
  VkPhysicalDeviceMemoryProperties memory_props;

  explicit VulkanDevice(VkPhysicalDevice physical_device) : physical(physical_device) {
    vkGetPhysicalDeviceProperties(physical, &props);
    vkGetPhysicalDeviceMemoryProperties(physical, &memory_props);
    if (props.apiVersion < VK_API_VERSION_1_2) {
      TVM_FFI_THROW(RuntimeError) << props.deviceName << " supports Vulkan "
                                  << VK_API_VERSION_MAJOR(props.apiVersion) << "."
                                  << VK_API_VERSION_MINOR(props.apiVersion)
                                  << "; the kernels need Vulkan 1.2";
    }
    uint32_t count = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(physical, &count, nullptr);
    std::vector<VkQueueFamilyProperties> families(count);
    vkGetPhysicalDeviceQueueFamilyProperties(physical, &count, families.data());
    uint32_t family = 0;
    while (family < count && !(families[family].queueFlags & VK_QUEUE_COMPUTE_BIT)) ++family;
    if (family == count) TVM_FFI_THROW(RuntimeError) << props.deviceName << " cannot compute";

    // clspv's kernels use 8/16-bit storage, float16, int64 and variable pointers as the source
    // needs them: enable every feature the device has, as mlc/testing/vulkan_check.py does.
    VkPhysicalDeviceVulkan12Features f12{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceVulkan11Features f11{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
    f11.pNext = &f12;
    VkPhysicalDeviceFeatures2 features{VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2};
    features.pNext = &f11;
    vkGetPhysicalDeviceFeatures2(physical, &features);
    // Except bounds checks on every access: the kernels index within their buffers.
    features.features.robustBufferAccess = VK_FALSE;
    float priority = 1.0f;
    VkDeviceQueueCreateInfo queue_info{VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO};
    queue_info.queueFamilyIndex = family;
    queue_info.queueCount = 1;
    queue_info.pQueuePriorities = &priority;
    VkDeviceCreateInfo info{VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO};
    info.pNext = &features;
    info.queueCreateInfoCount = 1;
    info.pQueueCreateInfos = &queue_info;
    VK_CHECK(vkCreateDevice(physical, &info, nullptr, &device));
    vkGetDeviceQueue(device, family, 0, &queue_);

    VkCommandPoolCreateInfo pool_info{VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO};
    pool_info.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    pool_info.queueFamilyIndex = family;
    VK_CHECK(vkCreateCommandPool(device, &pool_info, nullptr, &command_pool_));
    VkCommandBufferAllocateInfo cmd_info{VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO};
    cmd_info.commandPool = command_pool_;
    cmd_info.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    cmd_info.commandBufferCount = 1;
    VK_CHECK(vkAllocateCommandBuffers(device, &cmd_info, &cmd_));
    VkFenceCreateInfo fence_info{VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VK_CHECK(vkCreateFence(device, &fence_info, nullptr, &fence_));
    VkDescriptorPoolSize size{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, kBuffersPerBatch};
    VkDescriptorPoolCreateInfo descriptor_info{VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO};
    descriptor_info.maxSets = kSetsPerBatch;
    descriptor_info.poolSizeCount = 1;
    descriptor_info.pPoolSizes = &size;
    VK_CHECK(vkCreateDescriptorPool(device, &descriptor_info, nullptr, &descriptor_pool_));
  }

  Buffer* Alloc(size_t nbytes) {
    // Zero-size Vulkan buffers are invalid; TVM allocates empty tensors.
    VkBufferCreateInfo info{VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO};
    info.size = std::max<size_t>(nbytes, 16);
    info.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT;
    auto b = std::make_unique<Buffer>();
    VK_CHECK(vkCreateBuffer(device, &info, nullptr, &b->buffer));
    VkMemoryRequirements need;
    vkGetBufferMemoryRequirements(device, b->buffer, &need);
    VkMemoryAllocateInfo alloc{VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO};
    alloc.allocationSize = need.size;
    alloc.memoryTypeIndex = HostVisibleMemoryType(need.memoryTypeBits);
    VkResult result = vkAllocateMemory(device, &alloc, nullptr, &b->memory);
    if (result != VK_SUCCESS) {
      vkDestroyBuffer(device, b->buffer, nullptr);
      TVM_FFI_THROW(RuntimeError) << "Vulkan: cannot allocate " << nbytes
                                  << " bytes: " << ResultName(result);
    }
    void* host = nullptr;
    VK_CHECK(vkBindBufferMemory(device, b->buffer, b->memory, 0));
    VK_CHECK(vkMapMemory(device, b->memory, 0, VK_WHOLE_SIZE, 0, &host));
    b->host = static_cast<char*>(host);
    return b.release();
  }

  void Free(Buffer* buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (recording_) {
      garbage_.push_back(buffer);
    } else {
      Destroy(buffer);
    }
  }

  // Records one dispatch into the batch: `record` gets the command buffer and a fresh
  // descriptor set of `layout` (with `num_buffers` storage buffers) to fill and bind.
  void Record(VkDescriptorSetLayout layout, uint32_t num_buffers,
              const std::function<void(VkCommandBuffer, VkDescriptorSet)>& record) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sets_used_ == kSetsPerBatch || buffers_used_ + num_buffers > kBuffersPerBatch) {
      SubmitAndWait();
    }
    if (!recording_) {
      VkCommandBufferBeginInfo begin{VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO};
      begin.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
      VK_CHECK(vkBeginCommandBuffer(cmd_, &begin));
      recording_ = true;
    }
    VkDescriptorSetAllocateInfo info{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO};
    info.descriptorPool = descriptor_pool_;
    info.descriptorSetCount = 1;
    info.pSetLayouts = &layout;
    VkDescriptorSet set;
    VK_CHECK(vkAllocateDescriptorSets(device, &info, &set));
    ++sets_used_;
    buffers_used_ += num_buffers;
    record(cmd_, set);
    // The next kernel may read what this one wrote (or overwrite what it read).
    Barrier(VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT);
  }

  // Runs everything recorded so far and waits for it: the host may then touch any buffer.
  void Sync() {
    std::lock_guard<std::mutex> lock(mutex_);
    SubmitAndWait();
  }

 private:
  VkQueue queue_;
  VkCommandPool command_pool_;
  VkCommandBuffer cmd_;
  VkFence fence_;
  VkDescriptorPool descriptor_pool_;
  std::mutex mutex_;  // guards the batch: the serving engine calls from several threads
  bool recording_ = false;
  uint32_t sets_used_ = 0, buffers_used_ = 0;
  std::vector<Buffer*> garbage_;

  uint32_t HostVisibleMemoryType(uint32_t allowed) const {
    const VkMemoryPropertyFlags host =
        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    int found = -1;
    for (uint32_t i = 0; i < memory_props.memoryTypeCount; ++i) {
      VkMemoryPropertyFlags flags = memory_props.memoryTypes[i].propertyFlags;
      if (!(allowed & (1u << i)) || (flags & host) != host) continue;
      if (flags & VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT) return i;
      if (found < 0) found = static_cast<int>(i);
    }
    if (found < 0) {
      TVM_FFI_THROW(RuntimeError) << props.deviceName << " has no host-visible coherent memory, "
                                  << "which this runtime keeps every buffer in";
    }
    return static_cast<uint32_t>(found);
  }

  void Barrier(VkPipelineStageFlags dst_stage, VkAccessFlags dst_access) {
    VkMemoryBarrier barrier{VK_STRUCTURE_TYPE_MEMORY_BARRIER};
    barrier.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT;
    barrier.dstAccessMask = dst_access | VK_ACCESS_SHADER_WRITE_BIT;
    vkCmdPipelineBarrier(cmd_, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, dst_stage, 0, 1, &barrier, 0,
                         nullptr, 0, nullptr);
  }

  void SubmitAndWait() {
    if (recording_) {
      // Waiting on the fence alone does not make the kernels' writes visible to the host.
      Barrier(VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
      VK_CHECK(vkEndCommandBuffer(cmd_));
      VkSubmitInfo submit{VK_STRUCTURE_TYPE_SUBMIT_INFO};
      submit.commandBufferCount = 1;
      submit.pCommandBuffers = &cmd_;
      VK_CHECK(vkQueueSubmit(queue_, 1, &submit, fence_));
      VK_CHECK(vkWaitForFences(device, 1, &fence_, VK_TRUE, UINT64_MAX));
      VK_CHECK(vkResetFences(device, 1, &fence_));
      VK_CHECK(vkResetCommandBuffer(cmd_, 0));
      VK_CHECK(vkResetDescriptorPool(device, descriptor_pool_, 0));
      recording_ = false;
      sets_used_ = buffers_used_ = 0;
    }
    for (Buffer* b : garbage_) Destroy(b);
    garbage_.clear();
  }

  void Destroy(Buffer* b) {
    vkDestroyBuffer(device, b->buffer, nullptr);
    vkFreeMemory(device, b->memory, nullptr);  // also unmaps
    delete b;
  }
};

// The device the calling thread set last (TVM's host code sets it before launching kernels).
thread_local int current_device = 0;

class VulkanDeviceAPI final : public DeviceAPI {
 public:
  static VulkanDeviceAPI* Global() {
    static auto* inst = new VulkanDeviceAPI();
    return inst;
  }

  VulkanDevice& Get(int id) {
    std::lock_guard<std::mutex> lock(mutex_);
    Instance& inst = Instance::Get();
    if (id < 0 || static_cast<size_t>(id) >= inst.physical.size()) {
      TVM_FFI_THROW(RuntimeError) << "no Vulkan device " << id << " ("
                                  << (inst.error.empty() ? "too few devices" : inst.error) << ")";
    }
    if (devices_.size() < inst.physical.size()) devices_.resize(inst.physical.size());
    if (!devices_[id]) devices_[id] = std::make_unique<VulkanDevice>(inst.physical[id]);
    return *devices_[id];
  }

  void SetDevice(tvm::Device dev) final { current_device = dev.device_id; }

  void GetAttr(tvm::Device dev, tvm::runtime::DeviceAttrKind kind, ffi::Any* rv) final {
    Instance& inst = Instance::Get();
    bool exists = dev.device_id >= 0 && static_cast<size_t>(dev.device_id) < inst.physical.size();
    if (kind == tvm::runtime::kExist) {
      *rv = static_cast<int64_t>(exists);
      return;
    }
    if (!exists) return;
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(inst.physical[dev.device_id], &props);
    const VkPhysicalDeviceLimits& limits = props.limits;
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock:
        *rv = static_cast<int64_t>(limits.maxComputeWorkGroupInvocations);
        break;
      case tvm::runtime::kWarpSize:
        *rv = static_cast<int64_t>(1);  // the kernels use no subgroup operations
        break;
      case tvm::runtime::kMaxSharedMemoryPerBlock:
        *rv = static_cast<int64_t>(limits.maxComputeSharedMemorySize);
        break;
      case tvm::runtime::kComputeVersion:  // the Vulkan version, "1.3"
        *rv = ffi::String(std::to_string(VK_API_VERSION_MAJOR(props.apiVersion)) + "." +
                          std::to_string(VK_API_VERSION_MINOR(props.apiVersion)));
        break;
      case tvm::runtime::kDeviceName:
        *rv = ffi::String(props.deviceName);
        break;
      case tvm::runtime::kDriverVersion:
        *rv = static_cast<int64_t>(props.driverVersion);
        break;
      case tvm::runtime::kMaxThreadDimensions: {
        const uint32_t* size = limits.maxComputeWorkGroupSize;
        *rv = ffi::String("[" + std::to_string(size[0]) + ", " + std::to_string(size[1]) + ", " +
                          std::to_string(size[2]) + "]");
        break;
      }
      case tvm::runtime::kTotalGlobalMemory: {
        VkPhysicalDeviceMemoryProperties memory;
        vkGetPhysicalDeviceMemoryProperties(inst.physical[dev.device_id], &memory);
        int64_t total = 0;
        for (uint32_t i = 0; i < memory.memoryHeapCount; ++i) {
          if (memory.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) {
            total += static_cast<int64_t>(memory.memoryHeaps[i].size);
          }
        }
        *rv = total;
        break;
      }
      default:
        break;  // unknown here: None
    }
  }

  void* AllocDataSpace(tvm::Device dev, size_t nbytes, size_t alignment,
                       DLDataType type_hint) final {
    return Get(dev.device_id).Alloc(nbytes);  // Vulkan aligns memory for any buffer use
  }

  void FreeDataSpace(tvm::Device dev, void* ptr) final {
    Get(dev.device_id).Free(static_cast<Buffer*>(ptr));
  }

  void StreamSync(tvm::Device dev, TVMStreamHandle stream) final { Get(dev.device_id).Sync(); }

  void* AllocWorkspace(tvm::Device dev, size_t size, DLDataType type_hint) final {
    return Workspaces()->AllocWorkspace(dev, size);
  }

  void FreeWorkspace(tvm::Device dev, void* ptr) final { Workspaces()->FreeWorkspace(dev, ptr); }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset,
                      size_t size, tvm::Device dev_from, tvm::Device dev_to, DLDataType type_hint,
                      TVMStreamHandle stream) final {
    // Pending kernels may read the destination or write the source: finish them first.
    const char* src = static_cast<const char*>(from);
    char* dst = static_cast<char*>(to);
    if (dev_from.device_type == kDLVulkan) {
      Get(dev_from.device_id).Sync();
      src = static_cast<const Buffer*>(from)->host;
    }
    if (dev_to.device_type == kDLVulkan) {
      Get(dev_to.device_id).Sync();
      dst = static_cast<Buffer*>(to)->host;
    }
    std::memmove(dst + to_offset, src + from_offset, size);  // views may share a buffer
  }

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<VulkanDevice>> devices_;

  static tvm::runtime::WorkspacePool* Workspaces() {
    static thread_local tvm::runtime::WorkspacePool pool(kDLVulkan, Global());
    return &pool;
  }
};

// One SPIR-V kernel: how its arguments map to bindings and push constants, and its pipelines.
class Kernel {
 public:
  Kernel(const json::Object& entry, std::vector<uint32_t> spirv) : spirv_(std::move(spirv)) {
    name_ = std::string(entry.at(ffi::String("name")).cast<ffi::String>());
    for (const ffi::Any& dtype : entry.at(ffi::String("arg_types")).cast<json::Array>()) {
      args_.push_back(Arg{ffi::StringToDLDataType(dtype.cast<ffi::String>())});
    }
    for (const auto& [ordinal, binding] : entry.at(ffi::String("buffers")).cast<json::Object>()) {
      Arg& arg = At(ordinal);
      arg.binding = static_cast<int>(binding.cast<int64_t>());
      bindings_.push_back(static_cast<uint32_t>(arg.binding));
    }
    auto push = entry.at(ffi::String("push_constants")).cast<json::Object>();
    for (const auto& [ordinal, range] : push) {
      auto offset_size = range.cast<json::Array>();
      Arg& arg = At(ordinal);
      arg.push_offset = static_cast<int>(offset_size[0].cast<int64_t>());
      arg.push_size = static_cast<int>(offset_size[1].cast<int64_t>());
    }
    push_constant_size_ =
        static_cast<uint32_t>(entry.at(ffi::String("push_constant_size")).cast<int64_t>());
    auto spec = entry.at(ffi::String("workgroup_size_spec_ids")).cast<json::Array>();
    for (int i = 0; i < 3; ++i) spec_ids_[i] = static_cast<uint32_t>(spec[i].cast<int64_t>());
    // Each extent after the arguments sets one of grid x/y/z (0-2) or workgroup x/y/z (3-5).
    static const std::map<std::string, int> dims = {
        {"blockIdx.x", 0},  {"blockIdx.y", 1},  {"blockIdx.z", 2},
        {"threadIdx.x", 3}, {"threadIdx.y", 4}, {"threadIdx.z", 5}};
    for (const ffi::Any& tag : entry.at(ffi::String("launch_params")).cast<json::Array>()) {
      auto found = dims.find(std::string(tag.cast<ffi::String>()));
      if (found == dims.end()) {
        TVM_FFI_THROW(RuntimeError) << "kernel " << name_ << ": unsupported launch tag "
                                    << tag.cast<ffi::String>();
      }
      launch_dims_.push_back(found->second);
    }
  }

  ~Kernel() {
    for (auto& [dev, p] : pipelines_) {
      try {
        dev->Sync();  // the batch may still dispatch these pipelines
      } catch (const std::exception&) {  // device lost: its objects go with it
      }
      for (auto& [workgroup, pipeline] : p.by_workgroup) {
        vkDestroyPipeline(dev->device, pipeline, nullptr);
      }
      vkDestroyPipelineLayout(dev->device, p.layout, nullptr);
      vkDestroyDescriptorSetLayout(dev->device, p.set_layout, nullptr);
      vkDestroyShaderModule(dev->device, p.shader, nullptr);
    }
  }

  // The host code's call: the kernel's arguments (buffers as our device pointers), then the
  // launch extents.
  void Launch(ffi::PackedArgs args) {
    const size_t n = args_.size();
    if (static_cast<size_t>(args.size()) != n + launch_dims_.size()) {
      TVM_FFI_THROW(RuntimeError) << "kernel " << name_ << " takes " << n << " arguments and "
                                  << launch_dims_.size() << " launch extents, got "
                                  << args.size();
    }
    std::array<uint32_t, 6> dims{1, 1, 1, 1, 1, 1};
    for (size_t j = 0; j < launch_dims_.size(); ++j) {
      dims[launch_dims_[j]] = static_cast<uint32_t>(args[n + j].cast<int64_t>());
    }
    std::vector<char> push(push_constant_size_);
    std::vector<VkDescriptorBufferInfo> infos;
    std::vector<uint32_t> bindings;
    for (size_t i = 0; i < n; ++i) {
      const Arg& arg = args_[i];
      if (arg.binding >= 0) {
        auto* buffer = static_cast<Buffer*>(args[i].cast<void*>());
        if (buffer == nullptr) TVM_FFI_THROW(RuntimeError) << name_ << ": null buffer " << i;
        infos.push_back({buffer->buffer, 0, VK_WHOLE_SIZE});
        bindings.push_back(static_cast<uint32_t>(arg.binding));
      } else if (arg.push_offset >= 0) {
        WriteScalar(args[i], arg, push.data() + arg.push_offset);
      }  // else: clspv dropped the unused argument
    }
    VulkanDevice& dev = VulkanDeviceAPI::Global()->Get(current_device);
    CheckLimits(dev, dims);
    const Pipelines& p = PipelinesOn(dev);
    VkPipeline pipeline = Pipeline(dev, {dims[3], dims[4], dims[5]});
    dev.Record(p.set_layout, static_cast<uint32_t>(infos.size()),
               [&](VkCommandBuffer cmd, VkDescriptorSet set) {
                 std::vector<VkWriteDescriptorSet> writes(infos.size());
                 for (size_t k = 0; k < infos.size(); ++k) {
                   writes[k] = {VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET};
                   writes[k].dstSet = set;
                   writes[k].dstBinding = bindings[k];
                   writes[k].descriptorCount = 1;
                   writes[k].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
                   writes[k].pBufferInfo = &infos[k];
                 }
                 vkUpdateDescriptorSets(dev.device, static_cast<uint32_t>(writes.size()),
                                        writes.data(), 0, nullptr);
                 vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline);
                 vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout, 0, 1,
                                         &set, 0, nullptr);
                 if (!push.empty()) {
                   vkCmdPushConstants(cmd, p.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0,
                                      push_constant_size_, push.data());
                 }
                 vkCmdDispatch(cmd, dims[0], dims[1], dims[2]);
               });
  }

 private:
  struct Arg {
    DLDataType dtype;
    int binding = -1;      // storage buffer binding in set 0
    int push_offset = -1;  // else a scalar's place in the push constants
    int push_size = 0;
  };
  // A kernel's Vulkan objects on one device; pipelines by workgroup size, which clspv makes
  // specialization constants (TVM fixes it per kernel, but nothing requires that).
  struct Pipelines {
    VkShaderModule shader;
    VkDescriptorSetLayout set_layout;
    VkPipelineLayout layout;
    std::map<std::array<uint32_t, 3>, VkPipeline> by_workgroup;
  };

  std::string name_;
  std::vector<Arg> args_;
  std::vector<uint32_t> bindings_;
  std::vector<int> launch_dims_;
  uint32_t push_constant_size_ = 0;
  std::array<uint32_t, 3> spec_ids_{};
  std::vector<uint32_t> spirv_;
  std::mutex mutex_;
  std::map<VulkanDevice*, Pipelines> pipelines_;

  Arg& At(const ffi::Any& ordinal) {
    size_t i = std::stoul(std::string(ordinal.cast<ffi::String>()));
    if (i >= args_.size()) TVM_FFI_THROW(RuntimeError) << name_ << ": no argument " << i;
    return args_[i];
  }

  void WriteScalar(ffi::AnyView value, const Arg& arg, char* dst) const {
    const DLDataType t = arg.dtype;
    if (t.code == kDLFloat && t.bits == 32 && arg.push_size == 4) {
      float v = static_cast<float>(value.cast<double>());
      std::memcpy(dst, &v, 4);
    } else if (t.code == kDLFloat && t.bits == 64 && arg.push_size == 8) {
      double v = value.cast<double>();
      std::memcpy(dst, &v, 8);
    } else if ((t.code == kDLInt || t.code == kDLUInt) && arg.push_size * 8 == t.bits) {
      int64_t v = value.cast<int64_t>();
      std::memcpy(dst, &v, arg.push_size);  // little-endian: the low bytes
    } else {
      TVM_FFI_THROW(RuntimeError) << "kernel " << name_ << ": cannot pass a "
                                  << ffi::DLDataTypeToString(t) << " in " << arg.push_size
                                  << " bytes of push constants";
    }
  }

  void CheckLimits(const VulkanDevice& dev, const std::array<uint32_t, 6>& dims) const {
    const VkPhysicalDeviceLimits& limits = dev.props.limits;
    for (int i = 0; i < 3; ++i) {
      if (dims[i] > limits.maxComputeWorkGroupCount[i] ||
          dims[3 + i] > limits.maxComputeWorkGroupSize[i]) {
        TVM_FFI_THROW(RuntimeError) << "kernel " << name_ << ": launch exceeds the limits of "
                                    << dev.props.deviceName << " in dimension " << i;
      }
    }
    if (dims[3] * dims[4] * dims[5] > limits.maxComputeWorkGroupInvocations) {
      TVM_FFI_THROW(RuntimeError) << "kernel " << name_ << ": workgroup too large for "
                                  << dev.props.deviceName;
    }
  }

  const Pipelines& PipelinesOn(VulkanDevice& dev) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = pipelines_.find(&dev);
    if (found != pipelines_.end()) return found->second;
    Pipelines p;
    VkShaderModuleCreateInfo shader{VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO};
    shader.codeSize = spirv_.size() * sizeof(uint32_t);
    shader.pCode = spirv_.data();
    VK_CHECK(vkCreateShaderModule(dev.device, &shader, nullptr, &p.shader));
    std::vector<VkDescriptorSetLayoutBinding> layout_bindings;
    for (uint32_t binding : bindings_) {
      layout_bindings.push_back({binding, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1,
                                 VK_SHADER_STAGE_COMPUTE_BIT, nullptr});
    }
    VkDescriptorSetLayoutCreateInfo set_info{VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO};
    set_info.bindingCount = static_cast<uint32_t>(layout_bindings.size());
    set_info.pBindings = layout_bindings.data();
    VK_CHECK(vkCreateDescriptorSetLayout(dev.device, &set_info, nullptr, &p.set_layout));
    VkPushConstantRange range{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_constant_size_};
    VkPipelineLayoutCreateInfo layout_info{VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO};
    layout_info.setLayoutCount = 1;
    layout_info.pSetLayouts = &p.set_layout;
    layout_info.pushConstantRangeCount = push_constant_size_ ? 1 : 0;
    layout_info.pPushConstantRanges = &range;
    VK_CHECK(vkCreatePipelineLayout(dev.device, &layout_info, nullptr, &p.layout));
    return pipelines_.emplace(&dev, p).first->second;
  }

  VkPipeline Pipeline(VulkanDevice& dev, std::array<uint32_t, 3> workgroup) {
    std::lock_guard<std::mutex> lock(mutex_);
    Pipelines& p = pipelines_.at(&dev);
    auto found = p.by_workgroup.find(workgroup);
    if (found != p.by_workgroup.end()) return found->second;
    std::array<VkSpecializationMapEntry, 3> entries;
    for (uint32_t i = 0; i < 3; ++i) entries[i] = {spec_ids_[i], 4 * i, 4};
    VkSpecializationInfo spec{3, entries.data(), sizeof(workgroup), workgroup.data()};
    VkComputePipelineCreateInfo info{VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO};
    info.stage = {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO};
    info.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    info.stage.module = p.shader;
    info.stage.pName = name_.c_str();
    info.stage.pSpecializationInfo = &spec;
    info.layout = p.layout;
    VkPipeline pipeline;
    VK_CHECK(vkCreateComputePipelines(dev.device, VK_NULL_HANDLE, 1, &info, nullptr, &pipeline));
    p.by_workgroup.emplace(workgroup, pipeline);
    return pipeline;
  }
};

// The device module of a `vulkan` library: `<manifest: str> <spirv: bytes>...`, each string
// or byte array prefixed by its u64 length, one SPIR-V module per manifest kernel, in order.
class SpirvModule : public ffi::ModuleObj {
 public:
  explicit SpirvModule(ffi::Bytes bytes) : bytes_(std::move(bytes)) {
    size_t pos = 0;
    manifest_ = Chunk(&pos);
    auto manifest = json::Parse(ffi::String(manifest_)).cast<json::Object>();
    int64_t format = manifest.at(ffi::String("format")).cast<int64_t>();
    if (format != kManifestFormat) {
      TVM_FFI_THROW(RuntimeError) << "this Vulkan runtime reads kernel manifests of format "
                                  << kManifestFormat << ", the library has " << format
                                  << ": rebuild the model or update mlc";
    }
    for (const ffi::Any& item : manifest.at(ffi::String("kernels")).cast<json::Array>()) {
      std::string code = Chunk(&pos);
      std::vector<uint32_t> spirv(code.size() / 4);
      std::memcpy(spirv.data(), code.data(), spirv.size() * 4);  // vkCreateShaderModule: aligned
      auto entry = item.cast<json::Object>();
      auto kernel = std::make_unique<Kernel>(entry, std::move(spirv));
      kernels_.emplace(std::string(entry.at(ffi::String("name")).cast<ffi::String>()),
                       std::move(kernel));
    }
    if (pos != bytes_.size()) TVM_FFI_THROW(RuntimeError) << "trailing bytes after the kernels";
  }

  const char* kind() const final { return "mlc_vulkan"; }
  int GetPropertyMask() const final {
    return ffi::Module::kBinarySerializable | ffi::Module::kRunnable;
  }
  ffi::Bytes SaveToBytes() const final { return bytes_; }
  ffi::String InspectSource(const ffi::String& format) const final { return manifest_; }

  ffi::Optional<ffi::Function> GetFunction(const ffi::String& name) final {
    auto found = kernels_.find(std::string(name));
    if (found == kernels_.end()) return std::nullopt;
    Kernel* kernel = found->second.get();
    ffi::ObjectPtr<ffi::Object> self = ffi::GetObjectPtr<ffi::Object>(this);  // keeps it alive
    return ffi::Function::FromPacked(
        [self, kernel](ffi::PackedArgs args, ffi::Any* rv) { kernel->Launch(args); });
  }

 private:
  ffi::Bytes bytes_;
  std::string manifest_;
  std::map<std::string, std::unique_ptr<Kernel>> kernels_;

  std::string Chunk(size_t* pos) const {
    uint64_t size = 0;
    if (*pos + sizeof(size) > bytes_.size()) TVM_FFI_THROW(RuntimeError) << "truncated module";
    std::memcpy(&size, bytes_.data() + *pos, sizeof(size));
    *pos += sizeof(size);
    if (*pos + size > bytes_.size()) TVM_FFI_THROW(RuntimeError) << "truncated module";
    std::string out(bytes_.data() + *pos, size);
    *pos += size;
    return out;
  }
};

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def_packed("device_api.vulkan",
                  [](ffi::PackedArgs args, ffi::Any* rv) {
                    *rv = static_cast<void*>(VulkanDeviceAPI::Global());
                  })
      .def("ffi.Module.load_from_bytes.mlc_vulkan",
           [](ffi::Bytes bytes) { return ffi::Module(ffi::make_object<SpirvModule>(bytes)); })
      .def("mlc.vulkan.status", []() { return ffi::String(Instance::Get().error); });
}

}  // namespace mlc_vulkan
