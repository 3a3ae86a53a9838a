"""Where reference distributions come from (frozen initial policy, soup, teacher, proxy)."""

from .soup import soup_state_dict

__all__ = ["soup_state_dict"]
