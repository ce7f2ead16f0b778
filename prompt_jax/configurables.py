"""Every library object gin can bind, registered in one place (gin stays at the edges).

    prompts.Prompt, prompts.PromptBank, prompts.ReparamPrompt  prompt modules (PROMPT = @...())
    prompts.reparam_param_groups                             the reparameterised prompt's groups
    prompts.EPTPrompt, ept.param_groups                      EPT-style / DePT (methods/ept.gin, ...)
    prompts.MSFPrompt, prompts.ISTPrompt, ipt.*,
      initializers.FromISTRun                                IPT (methods/ipt_*.gin)
    initializers.RandomUniform, ReferenceUniform, SampledVocab, ClassLabels, FromString,
      FromFile, FromRun                                      prompt initializers (PROMPT_INIT)
    prompts.TeacherPrompt, panda.param_groups, panda.KDLoss,
      panda.kd_loss_terms                                    PANDA-style KD (methods/panda.gin)
    optim.OptimizerConfig, optim.ParamGroups                 parameter groups and settings
    trainer.TrainerConfig                                    loop settings the run files do
                                                             not set (health bounds, logging)
    xlingual.Study, xlingual.GymStudy                        cross-lingual tables (studies/)
    sweep.Table, sweep.GymBackbone                           ablation tables (`prompt-jax sweep`)
    inputs.LengthBuckets                                     length bucketing of train / eval
                                                             batches (`.enabled = False`:
                                                             fixed shapes)

A method of your own registers its module the same way in your own Python module, e.g.
`gin.external_configurable(MyPrompt, module="my")`, and your gin file imports it with an
`import my_module` line; nothing in prompt_jax needs an edit.
"""

from __future__ import annotations

import gin

from prompt_jax.prompts import ept, initializers, lester, panda, reparam
from prompt_jax.studies import crosslingual, gym_scripts, sweep
from prompt_jax.train import inputs
from prompt_jax.train import optimizer
from prompt_jax.train import trainer

Prompt = gin.external_configurable(lester.Prompt, module="prompts")
PromptBank = gin.external_configurable(lester.PromptBank, module="prompts")
ReparamPrompt = gin.external_configurable(reparam.ReparamPrompt, module="prompts")
reparam_param_groups = gin.external_configurable(reparam.param_groups,
                                                 name="reparam_param_groups", module="prompts")
EPTPrompt = gin.external_configurable(ept.EPTPrompt, module="prompts")
# Its three parameter groups (prompt, low_rank, mixer), each with its own learning rate.
EPTParamGroups = gin.external_configurable(ept.param_groups, name="param_groups",
                                           module="ept")
# PANDA-style KD transfer: student + frozen teacher prompt, its groups and its loss term.
TeacherPrompt = gin.external_configurable(panda.TeacherPrompt, module="prompts")
PandaParamGroups = gin.external_configurable(panda.param_groups, name="param_groups",
                                             module="panda")
KDLoss = gin.external_configurable(panda.KDLoss, module="panda")
kd_loss_terms = gin.external_configurable(panda.kd_loss_terms, module="panda")

for _name in ("RandomUniform", "ReferenceUniform", "SampledVocab", "ClassLabels",
              "FromString", "FromFile", "FromRun"):
  gin.external_configurable(getattr(initializers, _name), module="initializers")

# Called (rather than the bare classes) where the library builds its defaults, so
# `optim.OptimizerConfig.learning_rate = ...` also reaches the default parameter groups.
OptimizerConfig = gin.external_configurable(optimizer.OptimizerConfig, module="optim")
ParamGroups = gin.external_configurable(optimizer.ParamGroups, module="optim")

# Built by `runs.train` through this wrapper, so e.g.
# `--gin.trainer.TrainerConfig.max_param_norm=1e8` reaches the loop.
TrainerConfig = gin.external_configurable(trainer.TrainerConfig, module="trainer")

# A cross-lingual table (`prompt-jax xlingual`, gin/xlingual/*.gin) and the gym's backbone.
Study = gin.external_configurable(crosslingual.Study, module="xlingual")
GymStudy = gin.external_configurable(gym_scripts.GymStudy, module="xlingual")

# IPT (methods/ipt_msf.gin, ipt_ist.gin, ipt_pt.gin): its two modules, their parameter
# groups, where their frozen arrays come from, and the IPT -> PT initializer.
from prompt_jax.prompts import ipt as _ipt  # noqa: E402  (kept beside its registrations)

MSFPrompt = gin.external_configurable(_ipt.MSFPrompt, module="prompts")
ISTPrompt = gin.external_configurable(_ipt.ISTPrompt, module="prompts")
StageZeroBank = gin.external_configurable(_ipt.StageZeroBank, module="ipt")
ProjBFromRun = gin.external_configurable(_ipt.ProjBFromRun, module="ipt")
FromISTRun = gin.external_configurable(_ipt.FromISTRun, module="initializers")
msf_param_groups = gin.external_configurable(_ipt.msf_param_groups, module="ipt")
ist_param_groups = gin.external_configurable(_ipt.ist_param_groups, module="ipt")
pt_param_groups = gin.external_configurable(_ipt.pt_param_groups, module="ipt")

# An ablation table (`prompt-jax sweep`, gin/tables/*.gin) and the gym's backbones by size.
Table = gin.external_configurable(sweep.Table, module="sweep")
GymBackbone = gin.external_configurable(sweep.GymBackbone, module="sweep")

# Built by `runs.train` / `evaluate` / `infer` through this wrapper, so
# `--gin.inputs.LengthBuckets.enabled=False` pads every batch to TASK_FEATURE_LENGTHS.
LengthBuckets = gin.external_configurable(inputs.LengthBuckets, module="inputs")
