"""PyFlink job entry points and graph builders: ``build(env, source, sinks, cfg)``."""
