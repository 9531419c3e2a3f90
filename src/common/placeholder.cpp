// Placeholder translation unit (removed when the common area gets real sources).
namespace resq { void common_placeholder() {} }
