"""Our Relax pipeline: fuse, legalize, schedule per target, plan memory, lower to the VM.

The stock llvm pipeline does no operator fusion; this one fuses `matmul(x, permute_dims(W))`
into one kernel reading W in place and fuses elementwise epilogues into their producers.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.target import Target

from mlc.targets import TargetPreset


def relax_pipeline(preset: TargetPreset, target: Target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="mlc_pipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        passes = [
            relax.transform.FuseTransposeMatmul(),
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
            *preset.schedule_passes(target),
            relax.transform.RewriteDataflowReshape(),
            relax.transform.ToNonDataflow(),
            relax.transform.RemovePurityChecking(),
            relax.transform.CallTIRRewrite(),
            relax.transform.StaticPlanBlockMemory(),
            *preset.planned_memory_passes(target),
            relax.transform.LowerAllocTensor(),
            relax.transform.KillAfterLastUse(),
            relax.transform.LowerRuntimeBuiltin(),
            relax.transform.ComputePrimValue(),
            relax.transform.VMShapeLower(),
            relax.transform.AttachGlobalSymbol(),
        ]
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
