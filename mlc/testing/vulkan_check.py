"""Run clspv's SPIR-V kernels on a Vulkan device (Mesa's llvmpipe here) for the kernel checker.

Each kernel follows clspv's default interface, read back from its reflection: every buffer
argument is a storage buffer in descriptor set 0, scalar arguments sit in push constants, and
the workgroup size is given by specialization constants.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlc.targets import ToolMissingError
from mlc.targets.spirv import KernelInterface

INSTALL_HINT = (
    "install a Vulkan loader and driver and the Python bindings: `apt-get install libvulkan1 "
    "mesa-vulkan-drivers` (llvmpipe, a CPU Vulkan device) and `pip install vulkan`"
)


def _vulkan() -> Any:
    try:
        import vulkan
    except (ImportError, OSError) as err:  # OSError: the package loads libvulkan.so.1
        raise ToolMissingError(
            f"running Vulkan kernels needs the vulkan bindings: {INSTALL_HINT}"
        ) from err
    return vulkan


class VulkanDevice:
    """A `kernel_check.Device` dispatching SPIR-V compute kernels by name."""

    def __init__(self, kernels: dict[str, tuple[bytes, KernelInterface]]):
        vk = self.vk = _vulkan()
        self.kernels = kernels
        app = vk.VkApplicationInfo(apiVersion=vk.VK_MAKE_VERSION(1, 2, 0))
        try:
            self.instance = vk.vkCreateInstance(vk.VkInstanceCreateInfo(pApplicationInfo=app), None)
        except vk.VkError as err:
            raise ToolMissingError(f"no Vulkan driver ({err!r}): {INSTALL_HINT}") from err
        physical = vk.vkEnumeratePhysicalDevices(self.instance)
        if not physical:
            raise ToolMissingError(f"no Vulkan device found: {INSTALL_HINT}")
        self.physical = physical[0]
        self.name = vk.vkGetPhysicalDeviceProperties(self.physical).deviceName
        families = vk.vkGetPhysicalDeviceQueueFamilyProperties(self.physical)
        self.family = next(
            i for i, f in enumerate(families) if f.queueFlags & vk.VK_QUEUE_COMPUTE_BIT
        )
        # Enable every feature the device has (16-bit storage, float16, int64): kernels use them.
        f12 = vk.VkPhysicalDeviceVulkan12Features()
        f11 = vk.VkPhysicalDeviceVulkan11Features(pNext=f12)
        features = vk.VkPhysicalDeviceFeatures2(pNext=f11)
        vk.vkGetPhysicalDeviceFeatures2(self.physical, features)
        queue_info = vk.VkDeviceQueueCreateInfo(
            queueFamilyIndex=self.family, queueCount=1, pQueuePriorities=[1.0]
        )
        self.device = vk.vkCreateDevice(
            self.physical,
            vk.VkDeviceCreateInfo(pNext=features, pQueueCreateInfos=[queue_info]),
            None,
        )
        self.queue = vk.vkGetDeviceQueue(self.device, self.family, 0)
        self.pool = vk.vkCreateCommandPool(
            self.device, vk.VkCommandPoolCreateInfo(queueFamilyIndex=self.family), None
        )
        self.memory_type = self._host_visible_memory()
        self._pipelines: dict[tuple, tuple] = {}
        self._modules: dict[str, Any] = {}

    def _host_visible_memory(self) -> int:
        vk = self.vk
        props = vk.vkGetPhysicalDeviceMemoryProperties(self.physical)
        want = vk.VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | vk.VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
        for i in range(props.memoryTypeCount):
            if props.memoryTypes[i].propertyFlags & want == want:
                return i
        raise RuntimeError(f"{self.name} has no host-visible coherent memory")

    # -- buffers ------------------------------------------------------------------------------

    def alloc(self, nbytes: int) -> tuple[Any, Any, int]:
        vk = self.vk
        size = max(16, -(-nbytes // 16) * 16)
        buffer = vk.vkCreateBuffer(
            self.device,
            vk.VkBufferCreateInfo(size=size, usage=vk.VK_BUFFER_USAGE_STORAGE_BUFFER_BIT),
            None,
        )
        need = vk.vkGetBufferMemoryRequirements(self.device, buffer)
        memory = vk.vkAllocateMemory(
            self.device,
            vk.VkMemoryAllocateInfo(allocationSize=need.size, memoryTypeIndex=self.memory_type),
            None,
        )
        vk.vkBindBufferMemory(self.device, buffer, memory, 0)
        return buffer, memory, size

    def upload(self, array: np.ndarray) -> tuple[Any, Any, int]:
        handle = self.alloc(array.nbytes)
        data = np.ascontiguousarray(array).tobytes()
        mapped = self.vk.vkMapMemory(self.device, handle[1], 0, handle[2], 0)
        self.vk.ffi.memmove(mapped, data, len(data))
        self.vk.vkUnmapMemory(self.device, handle[1])
        return handle

    def download(self, buffer: tuple, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        mapped = self.vk.vkMapMemory(self.device, buffer[1], 0, buffer[2], 0)
        out = np.frombuffer(bytes(mapped[:nbytes]), dtype).reshape(shape)
        self.vk.vkUnmapMemory(self.device, buffer[1])
        return out.copy()

    # -- kernels ------------------------------------------------------------------------------

    def _pipeline(self, kernel: str, block: tuple[int, ...]) -> tuple:
        key = (kernel, block)
        if key in self._pipelines:
            return self._pipelines[key]
        vk = self.vk
        code, iface = self.kernels[kernel]
        if kernel not in self._modules:
            self._modules[kernel] = vk.vkCreateShaderModule(
                self.device, vk.VkShaderModuleCreateInfo(codeSize=len(code), pCode=code), None
            )
        bindings = [
            vk.VkDescriptorSetLayoutBinding(
                binding=b,
                descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                descriptorCount=1,
                stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT,
            )
            for b in sorted(iface.buffers.values())
        ]
        set_layout = vk.vkCreateDescriptorSetLayout(
            self.device, vk.VkDescriptorSetLayoutCreateInfo(pBindings=bindings), None
        )
        ranges = []
        if iface.push_constant_size:
            ranges = [
                vk.VkPushConstantRange(
                    stageFlags=vk.VK_SHADER_STAGE_COMPUTE_BIT,
                    offset=0,
                    size=iface.push_constant_size,
                )
            ]
        layout = vk.vkCreatePipelineLayout(
            self.device,
            vk.VkPipelineLayoutCreateInfo(pSetLayouts=[set_layout], pPushConstantRanges=ranges),
            None,
        )
        entries = [
            vk.VkSpecializationMapEntry(constantID=spec_id, offset=4 * i, size=4)
            for i, spec_id in enumerate(iface.workgroup_size_spec_ids)
        ]
        spec_data = np.array(block[: len(entries)], np.uint32).tobytes()
        spec = vk.VkSpecializationInfo(
            pMapEntries=entries, dataSize=len(spec_data), pData=vk.ffi.from_buffer(spec_data)
        )
        stage = vk.VkPipelineShaderStageCreateInfo(
            stage=vk.VK_SHADER_STAGE_COMPUTE_BIT,
            module=self._modules[kernel],
            pName=kernel,
            pSpecializationInfo=spec,
        )
        pipeline = vk.vkCreateComputePipelines(
            self.device, None, 1, [vk.VkComputePipelineCreateInfo(stage=stage, layout=layout)], None
        )[0]
        self._pipelines[key] = (pipeline, layout, set_layout, spec_data)
        return self._pipelines[key]

    def launch(
        self, kernel: str, args: list[Any], grid: tuple[int, ...], block: tuple[int, ...]
    ) -> None:
        vk = self.vk
        _, iface = self.kernels[kernel]
        pipeline, layout, set_layout, _ = self._pipeline(kernel, block)
        pool = vk.vkCreateDescriptorPool(
            self.device,
            vk.VkDescriptorPoolCreateInfo(
                maxSets=1,
                pPoolSizes=[
                    vk.VkDescriptorPoolSize(
                        type=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                        descriptorCount=max(1, len(iface.buffers)),
                    )
                ],
            ),
            None,
        )
        (descriptor_set,) = vk.vkAllocateDescriptorSets(
            self.device,
            vk.VkDescriptorSetAllocateInfo(descriptorPool=pool, pSetLayouts=[set_layout]),
        )
        writes = [
            vk.VkWriteDescriptorSet(
                dstSet=descriptor_set,
                dstBinding=binding,
                descriptorType=vk.VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                pBufferInfo=[
                    vk.VkDescriptorBufferInfo(
                        buffer=args[ordinal][0], offset=0, range=args[ordinal][2]
                    )
                ],
            )
            for ordinal, binding in iface.buffers.items()
        ]
        if writes:
            vk.vkUpdateDescriptorSets(self.device, len(writes), writes, 0, None)
        push = bytearray(iface.push_constant_size)
        for ordinal, (offset, size) in iface.push_constants.items():
            push[offset : offset + size] = np.asarray(args[ordinal]).tobytes()[:size]
        (cmd,) = vk.vkAllocateCommandBuffers(
            self.device,
            vk.VkCommandBufferAllocateInfo(
                commandPool=self.pool,
                level=vk.VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                commandBufferCount=1,
            ),
        )
        vk.vkBeginCommandBuffer(cmd, vk.VkCommandBufferBeginInfo())
        vk.vkCmdBindPipeline(cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, pipeline)
        vk.vkCmdBindDescriptorSets(
            cmd, vk.VK_PIPELINE_BIND_POINT_COMPUTE, layout, 0, 1, [descriptor_set], 0, None
        )
        if push:
            data = bytes(push)
            vk.vkCmdPushConstants(
                cmd, layout, vk.VK_SHADER_STAGE_COMPUTE_BIT, 0, len(data), vk.ffi.from_buffer(data)
            )
        vk.vkCmdDispatch(cmd, *grid)
        vk.vkEndCommandBuffer(cmd)
        vk.vkQueueSubmit(self.queue, 1, [vk.VkSubmitInfo(pCommandBuffers=[cmd])], None)
        vk.vkQueueWaitIdle(self.queue)
        vk.vkFreeCommandBuffers(self.device, self.pool, 1, [cmd])
        vk.vkDestroyDescriptorPool(self.device, pool, None)
