from .tolerant_test_loop import FILE_ERRORS, NoTestDataError, TolerantTestLoop, file_error_line

__all__ = ['FILE_ERRORS', 'NoTestDataError', 'TolerantTestLoop', 'file_error_line']
