"""The one training path of nodes and simulation: model, batches, augmentation, gradients."""
