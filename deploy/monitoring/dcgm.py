"""NVIDIA's DCGM exporter on GPU nodes: the fields the GPU alerts read, and the counters file for them.

    >>> from deploy.monitoring import dcgm
    >>> dcgm.DEFAULT_PORT, dcgm.XID_ERRORS
    (9400, 'DCGM_FI_DEV_XID_ERRORS')
    >>> [f for f in dcgm.ALERT_FIELDS if f not in dcgm.DEFAULT_COLLECTED][:2]
    ['DCGM_FI_DEV_ECC_DBE_VOL_TOTAL', 'DCGM_FI_DEV_CLOCKS_EVENT_REASONS']

The names are dcgm-exporter's (``etc/default-counters.csv`` of github.com/NVIDIA/dcgm-exporter, read at
d5e5f510, May 2026): a field's name in the counters file is the Prometheus metric's name. The default file
collects the XID and row-remapping fields but leaves the ECC, NVLink error and clock-event fields commented
out, so the release ships ``dcgm/kimi-deploy-counters.csv`` (the default's fields plus those) for
``dcgm-exporter -f`` (``--collectors``, or ``DCGM_EXPORTER_COLLECTORS``).
"""

from __future__ import annotations

#: dcgm-exporter's own default listen port (``-a :9400``).
DEFAULT_PORT = 9400
#: Where the rendered counters file lives, relative to ``monitoring/``.
COUNTERS_FILE = "dcgm/kimi-deploy-counters.csv"

#: Value of the last XID error (0: none since the driver loaded); a gauge.
XID_ERRORS = "DCGM_FI_DEV_XID_ERRORS"
#: Double-bit (uncorrectable) volatile ECC errors since the driver loaded.
ECC_DBE = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
#: Rows remapped because of uncorrectable errors (Ampere and later replace page retirement with this).
UNCORRECTABLE_REMAPPED_ROWS = "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"
#: 1 when a row could not be remapped: the GPU needs replacing.
ROW_REMAP_FAILURE = "DCGM_FI_DEV_ROW_REMAP_FAILURE"
#: The clock-event reasons bitmask (DCGM's current name; ``CLOCK_THROTTLE_REASONS`` is its legacy alias).
CLOCK_EVENT_REASONS = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
CLOCK_THROTTLE_REASONS_LEGACY = "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"
#: NVLink error counters, summed over the links of a GPU.
NVLINK_ERRORS = (
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
)

#: Bits of the clock-event reasons mask (DCGM_CLOCKS_EVENT_REASON_*, as dcgm-exporter's
#: clock_events_collector.go lists them); the thermal ones are SW_THERMAL and HW_THERMAL.
CLOCK_EVENT_BITS = {
    "gpu_idle": 0x1,
    "clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal": 0x20,
    "hw_thermal": 0x40,
    "hw_power_brake": 0x80,
    "display_clocks": 0x100,
}
THERMAL_BITS = ("sw_thermal", "hw_thermal")

#: The fields ``etc/default-counters.csv`` collects (of those the alerts read).
DEFAULT_COLLECTED = (XID_ERRORS, UNCORRECTABLE_REMAPPED_ROWS, ROW_REMAP_FAILURE)
#: Every field an alert reads.
ALERT_FIELDS = (
    XID_ERRORS,
    ECC_DBE,
    CLOCK_EVENT_REASONS,
    *NVLINK_ERRORS,
    UNCORRECTABLE_REMAPPED_ROWS,
    ROW_REMAP_FAILURE,
)

# (field, type, help): the fields dcgm-exporter's default file collects (as of d5e5f510), then what the alerts
# add. The help texts are ours; only the field names and types must match the exporter's.
_DEFAULT_ROWS = [
    ("DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock in MHz."),
    ("DCGM_FI_DEV_MEM_CLOCK", "gauge", "Memory clock in MHz."),
    ("DCGM_FI_DEV_MEMORY_TEMP", "gauge", "Memory temperature in C."),
    ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature in C."),
    ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw in W."),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", "Energy used since boot in mJ."),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "counter", "PCIe retries."),
    ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilisation in percent."),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "gauge", "Memory copy utilisation in percent."),
    ("DCGM_FI_DEV_ENC_UTIL", "gauge", "Encoder utilisation in percent."),
    ("DCGM_FI_DEV_DEC_UTIL", "gauge", "Decoder utilisation in percent."),
    (XID_ERRORS, "gauge", "The last XID error (0: none)."),
    ("DCGM_FI_DEV_FB_FREE", "gauge", "Free framebuffer memory in MiB."),
    ("DCGM_FI_DEV_FB_USED", "gauge", "Used framebuffer memory in MiB."),
    ("DCGM_FI_DEV_FB_RESERVED", "gauge", "Reserved framebuffer memory in MiB."),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "NVLink bandwidth counter over all lanes."),
    ("DCGM_FI_DEV_VGPU_LICENSE_STATUS", "gauge", "vGPU licence status."),
    (UNCORRECTABLE_REMAPPED_ROWS, "counter", "Rows remapped for uncorrectable errors."),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "counter", "Rows remapped for correctable errors."),
    (ROW_REMAP_FAILURE, "gauge", "1 when a row remapping failed."),
    ("DCGM_FI_DRIVER_VERSION", "label", "Driver version."),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", "Fraction of time the graphics engine is active."),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "gauge", "Fraction of cycles the tensor pipe is active."),
    ("DCGM_FI_PROF_DRAM_ACTIVE", "gauge", "Fraction of cycles device memory is busy."),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", "gauge", "PCIe bytes sent per second."),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", "gauge", "PCIe bytes received per second."),
]
_ADDED_ROWS = [
    (ECC_DBE, "counter", "Double-bit (uncorrectable) volatile ECC errors."),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "counter", "Single-bit (corrected) volatile ECC errors."),
    (CLOCK_EVENT_REASONS, "gauge", "Clock-event reasons bitmask (DCGM_CLOCKS_EVENT_REASON_*)."),
    (NVLINK_ERRORS[0], "counter", "NVLink flow-control CRC errors."),
    (NVLINK_ERRORS[1], "counter", "NVLink data CRC errors."),
    (NVLINK_ERRORS[2], "counter", "NVLink replays."),
    (NVLINK_ERRORS[3], "counter", "NVLink recoveries."),
]


def counters_csv() -> str:
    """The counters file for ``dcgm-exporter -f``: the exporter's defaults plus the fields the alerts read.

    >>> text = counters_csv()
    >>> all(f"\\n{field}," in text for field in ALERT_FIELDS)
    True
    """
    lines = [
        "# Rendered by kimi-deploy: dcgm-exporter's etc/default-counters.csv plus the fields the GPU alerts",
        "# read (ECC, clock-event reasons, NVLink errors), which the default file leaves commented out.",
        "# Run: dcgm-exporter -f <this file>   (or DCGM_EXPORTER_COLLECTORS=<this file>)",
        "# Format: DCGM field, Prometheus metric type, help message",
        "",
        "# dcgm-exporter's defaults",
        *(f"{f}, {t}, {h}" for f, t, h in _DEFAULT_ROWS),
        "",
        "# added for the kimi-deploy GPU alerts",
        *(f"{f}, {t}, {h}" for f, t, h in _ADDED_ROWS),
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "ALERT_FIELDS",
    "CLOCK_EVENT_BITS",
    "CLOCK_EVENT_REASONS",
    "CLOCK_THROTTLE_REASONS_LEGACY",
    "COUNTERS_FILE",
    "DEFAULT_COLLECTED",
    "DEFAULT_PORT",
    "ECC_DBE",
    "NVLINK_ERRORS",
    "ROW_REMAP_FAILURE",
    "THERMAL_BITS",
    "UNCORRECTABLE_REMAPPED_ROWS",
    "XID_ERRORS",
    "counters_csv",
]
