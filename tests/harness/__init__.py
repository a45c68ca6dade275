"""The broker-free harness: the real handler, dispatcher and relay over fakes (the idea of
FastStream's TestBroker). `fakes` holds the parts; `harness` wires them."""
