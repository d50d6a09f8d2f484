"""Files the gateway serves to CPEs and receives from them, and firmware campaigns."""
