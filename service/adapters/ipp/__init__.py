"""IPP: the message format (`encoding`), our options as IPP attributes (`attributes`), and an
async client over HTTP (`client`). The printer adapter is `service.adapters.printers.ipp`."""
