"""Networks: `model(x_t (B,C,H,W), t (B,)) -> (B,C,H,W)`."""
