"""config: TOML -> Config, validation, the derived EngineConfig / RulesetSpec, PortSentry import.

May import: the standard library, ``nfsentry.core``, ``nfsentry.nft.spec`` (the ruleset spec is
pure data) and ``nfsentry.config``.
"""
