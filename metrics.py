"""Accuracy figures of the long-tail literature: top-1, per class, and Many/Medium/Few shot."""
import torch

# Training images per class: Many > 100, Medium 20..100, Few < 20 (Liu et al. 2019).
MANY_SHOT, FEW_SHOT = 100, 20


def evaluation_subset(num_items, batch_size, max_batches=None):
    """Indices evaluated: all, or for a capped (smoke) evaluation a fixed random subset, so that
    a test set stored class by class still gives every class its share."""
    if max_batches is None or max_batches * batch_size >= num_items:
        return torch.arange(num_items)
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(num_items, generator=generator)[:max_batches * batch_size].sort().values


@torch.no_grad()
def predict(model, images, batch_size, transform):
    """Predicted labels for ``images`` (any tensor ``transform`` turns into a batch), in eval mode."""
    was_training = model.training
    model.eval()
    predictions = [model(transform(images[start:start + batch_size]))[1].argmax(1)
                   for start in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(predictions)


def per_class_accuracy(predictions, labels, num_classes):
    """Accuracy (%) of each class; NaN for a class with no test sample."""
    correct = torch.zeros(num_classes, dtype=torch.float64)
    total = torch.zeros(num_classes, dtype=torch.float64)
    labels = labels.cpu()
    total.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
    correct.index_add_(0, labels, (predictions.cpu() == labels).double())
    return (100 * correct / total).tolist()


def shot_accuracy(class_accuracy, cls_num_list):
    """Mean accuracy over the Many-, Medium- and Few-shot classes (None where a group is empty)."""
    groups = {"many": [], "medium": [], "few": []}
    for acc, count in zip(class_accuracy, cls_num_list):
        if acc != acc:  # NaN: class absent from the evaluated samples
            continue
        key = "many" if count > MANY_SHOT else "few" if count < FEW_SHOT else "medium"
        groups[key].append(acc)
    return {k: (sum(v) / len(v) if v else None) for k, v in groups.items()}


def top1_accuracy(predictions, labels):
    return 100.0 * (predictions.cpu() == labels.cpu()).double().mean().item()
