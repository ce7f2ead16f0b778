"""Every library object gin can bind, registered in one place (gin stays at the edges).

    prompts.Prompt, prompts.PromptBank                       prompt modules (PROMPT = @...())
    prompts.EPTPrompt, ept.param_groups                      EPT-style / DePT (methods/ept.gin, ...)
    initializers.RandomUniform, ReferenceUniform, SampledVocab, ClassLabels, FromString,
      FromFile                                               prompt initializers (PROMPT_INIT)
    optim.OptimizerConfig, optim.ParamGroups                 parameter groups and settings

A method of your own registers its module the same way in your own Python module, e.g.
`gin.external_configurable(MyPrompt, module="my")`, and your gin file imports it with an
`import my_module` line; nothing in prompt_jax needs an edit.
"""

from __future__ import annotations

import gin

from prompt_jax.prompts import ept, initializers, lester
from prompt_jax.train import optimizer

Prompt = gin.external_configurable(lester.Prompt, module="prompts")
PromptBank = gin.external_configurable(lester.PromptBank, module="prompts")
EPTPrompt = gin.external_configurable(ept.EPTPrompt, module="prompts")
# Its three parameter groups (prompt, low_rank, mixer), each with its own learning rate.
EPTParamGroups = gin.external_configurable(ept.param_groups, name="param_groups",
                                           module="ept")

for _name in ("RandomUniform", "ReferenceUniform", "SampledVocab", "ClassLabels",
              "FromString", "FromFile"):
  gin.external_configurable(getattr(initializers, _name), module="initializers")

# Called (rather than the bare classes) where the library builds its defaults, so
# `optim.OptimizerConfig.learning_rate = ...` also reaches the default parameter groups.
OptimizerConfig = gin.external_configurable(optimizer.OptimizerConfig, module="optim")
ParamGroups = gin.external_configurable(optimizer.ParamGroups, module="optim")
