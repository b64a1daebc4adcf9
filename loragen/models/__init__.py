"""LightningModules (``LoRAGenModule``) and their plain ``nn.Module`` components."""
