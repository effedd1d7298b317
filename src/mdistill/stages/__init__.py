"""The stages the recipes in ``pipelines/`` call, each a function with typed inputs and a typed
result: corpus, select, teacher, cache_pass (the actor-pool pass into a cache), student (build,
training set, linear maps), train, evaluate, export, tune."""
