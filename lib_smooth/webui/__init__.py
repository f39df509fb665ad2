"""The AUTOMATIC1111 WebUI host: a Backend over the loaded checkpoint, LoRA via the built-in Lora
extension, and the HTTP routes. Every ``modules.*`` import is lazy, so this package imports outside the
WebUI too (its pure logic is tested there)."""
