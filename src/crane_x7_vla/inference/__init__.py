"""Remote VLA inference over rosbridge: settings (env + flags), pure scheduling/frames/status, the service loop.

Entry points: ``crane-x7-vla infer`` (:mod:`.cli`), :class:`.service.InferenceService`,
:func:`.settings.resolve_settings`. Importing this package imports neither torch nor websockets.
"""
