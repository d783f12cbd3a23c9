"""Top-1 and Many/Medium/Few-shot accuracy of a ``FeatureClassifier`` on the evaluation split,
single-process or sharded over the ranks of a ``torchrun`` group (every rank gets the result)."""
import torch
from torch.utils.data import DataLoader

from dataloader import collate_by_source
from dist_utils import gather_variable
from metrics import evaluation_subset, per_class_accuracy, shot_accuracy, top1_accuracy


def make_loader(images, batches, workers, device):
    return DataLoader(images, batch_sampler=batches, num_workers=workers, collate_fn=collate_by_source,
                      pin_memory=device.type == "cuda", persistent_workers=False)


@torch.no_grad()
def predict_keys(model, images, keys, batch_size, workers, ctx, memory_format):
    """Predicted and true labels of the images named by ``keys`` (one source), in order."""
    batches = [keys[s:s + batch_size] for s in range(0, len(keys), batch_size)]
    predictions, labels = [], []
    for batch in make_loader(images, batches, workers, ctx.device):
        (x, y), = batch.values()
        x = x.to(ctx.device, non_blocking=True).contiguous(memory_format=memory_format)
        predictions.append(model(x)[1].argmax(1))
        labels.append(y.to(ctx.device, non_blocking=True))
    if not predictions:
        empty = torch.zeros(0, dtype=torch.long, device=ctx.device)
        return empty, empty
    return torch.cat(predictions), torch.cat(labels)


@torch.no_grad()
def evaluate(model, data, images, ctx, test_batch_size, max_test_batches=None, workers=0,
             memory_format=torch.contiguous_format):
    """Evaluate on ``data.evaluation``: each rank takes every world_size-th image of the (capped)
    list, predictions are gathered. ``test_batch_size`` is global (split over the ranks)."""
    was_training = model.training
    model.eval()
    subset = evaluation_subset(len(data.evaluation), test_batch_size, max_test_batches).tolist()
    mine = [("eval", i, None) for i in subset[ctx.rank::ctx.world_size]]
    per_rank = max(1, test_batch_size // ctx.world_size)
    predictions, labels = predict_keys(model, images, mine, per_rank, workers, ctx, memory_format)
    model.train(was_training)
    predictions, labels = gather_variable(predictions, ctx).cpu(), gather_variable(labels, ctx).cpu()
    num_classes = len(data.cls_num_list)
    per_class = per_class_accuracy(predictions, labels, num_classes)
    return dict(top1=top1_accuracy(predictions, labels), per_class=per_class,
                shots=shot_accuracy(per_class, data.cls_num_list), count=len(labels))


def format_shots(shots):
    return " / ".join("n/a" if shots[k] is None else f"{shots[k]:.2f}" for k in ("many", "medium", "few"))
