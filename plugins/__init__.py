"""Methods shipped with cnnviz (installed as ``cnnviz_plugins``). Each module is
one plugin, registered through its own entry point exactly like a third party's."""
