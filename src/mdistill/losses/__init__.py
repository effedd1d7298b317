from mdistill.losses.MSELoss import MSELoss

__all__ = ["MSELoss"]
