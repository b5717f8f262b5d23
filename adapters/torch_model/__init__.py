"""What the torch adapter knows about its module: the answers to the adapter
contract's model questions, one module each."""
