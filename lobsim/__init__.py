"""The market side: order book on a grid, SWA features, valuation models, propagation and attacks."""
